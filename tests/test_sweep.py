"""sweep.py: a grid over knobs and seeds, its table, CSV and picture, resuming, and its refusals."""
import csv
import os
import re

import pytest

import sweep
from conftest import TINY, run_process


@pytest.mark.parametrize('args, message', [
    (['--n_layr=1,2'], "unknown config key 'n_layr' (did you mean 'n_layer'?)"),
    (['--n_layer=1,,2'], 'has an empty value'),
    (['--n_layer=1,two'], "n_layer='two' is not a valid int"),
    (['--dropout=0.1,x'], "dropout='x' is not a valid float"),
    (['--n_layer=1,2', '--seeds=0'], '--seeds must be a whole number of at least 1'),
    (['--n_layer=1,2', '--seeds=two'], '--seeds must be a whole number of at least 1'),
    (['--n_layer=1,2', 'config/nothing.py'], "config file 'config/nothing.py' not found"),
    (['--n_layer=1,2', '--jobs=0'], '--jobs must be a whole number of at least 1'),
    (['--n_layer=1,2', '--jobs=2', '--max_time=30'], 'under --max_time every run would get fewer steps'),
])
def test_a_bad_grid_is_refused_before_anything_runs(proj, monkeypatch, capsys, args, message):
    monkeypatch.setattr(sweep, 'ROOT', str(proj))
    with pytest.raises(SystemExit) as e:
        sweep.main([*args, '--out_dir=sw'])
    assert str(e.value).startswith('error: ') and message in str(e.value) and '\n' not in str(e.value)
    assert not (proj / 'sw').exists() and 'running' not in capsys.readouterr().out


@pytest.mark.slow
def test_two_seeds_table_csv_picture_and_resume(proj):
    args = ['sweep.py', '--n_head=1,2', '--seeds=2', *TINY, '--max_iters=6', '--out_dir=sw']
    r = run_process(proj, *args)
    assert r.returncode == 0, r.stderr
    row = r'^\| (\d) \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± [\d.]+ \| 6 \| [\d.]+ \| 2 ok \|$'  # n_head, bpb, loss
    rows = re.findall(row, r.stdout, re.M)
    assert [row[0] for row in rows] == ['1', '2'] and all(float(row[2]) > 0 for row in rows)  # two seeds differ
    with open(proj / 'sw' / 'sweep.csv') as f:
        runs = list(csv.DictReader(f))
    assert [(x['n_head'], x['seed']) for x in runs] == [(h, s) for h in '12' for s in ('1337', '1338')]
    assert all(x['status'] == 'ok' for x in runs) and (proj / 'sw' / 'sweep.png').stat().st_size > 1000
    again = run_process(proj, *args)  # the finished runs are skipped
    assert again.returncode == 0 and again.stdout.count('done already') == 4 and ': running' not in again.stdout
    assert [line for line in again.stdout.splitlines() if line.startswith('| 1 |')] == \
        [line for line in r.stdout.splitlines() if line.startswith('| 1 |')]
    assert len(os.listdir(proj / 'sw')) == 4 + 2  # a folder for each run, sweep.csv and sweep.png


@pytest.mark.slow
def test_two_jobs_at_once_give_the_results_of_one_at_a_time(proj):
    """Equal steps, two runs side by side on one core each: the same results as one after the other (to the
    summation order of another thread count), each run's output kept in its folder."""
    args = ['--n_head=1,2', '--seeds=2', *TINY, '--max_iters=6', '--dtype=float32']
    alone = run_process(proj, 'sweep.py', *args, '--out_dir=one')
    both = run_process(proj, 'sweep.py', *args, '--jobs=2', '--out_dir=two')
    assert alone.returncode == 0 and both.returncode == 0, alone.stderr + both.stderr
    rows = []
    for name in ('one', 'two'):
        with open(proj / name / 'sweep.csv') as f:
            rows.append([(x['n_head'], x['seed'], float(x['val_loss'])) for x in csv.DictReader(f)])
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
    assert [r[2] for r in rows[1]] == pytest.approx([r[2] for r in rows[0]], rel=1e-4)
    for h in '12':
        for s in (1337, 1338):
            out = proj / sweep.folder_of('two', {'n_head': h}, s) / 'gpt.out'
            assert out.read_text().count('whole-split val loss') == 1
