"""Defects found by a new user's pass on 2026-12-07, each with a test that failed before its fix: a run that
writes nothing keeps its hands off a kept LoRA base, look.py never writes over the project, sweep folders can't
collide, a noisy timing is never kept, a checkpoint is evaluated in its own precision, log.csv survives a crash,
a LoRA run can be moved, and look.py runs gpt.py's checks and refuses in one line."""
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import roads
import sweep
from conftest import TINY, one_line_error, run


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A test's own, empty roads cache."""
    path = tmp_path / 'cache' / 'roads.json'
    monkeypatch.setattr(roads, 'CACHE', str(path))
    return path


def lora_run(proj, out_dir='out-lora', base='out/ckpt.pt', steps=10):
    r = run(proj, 'gpt.py', *TINY, f'--init_from={base}', '--lora_rank=4', f'--out_dir={out_dir}',
            f'--max_iters={steps}', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    return proj / out_dir / 'base' / 'ckpt.pt'


def whole_split(r):
    assert r.returncode == 0, r.stderr
    return re.search(r'whole-split val loss ([\d.]+)', r.stdout).group(1)


# ---------------------------------------------------------------------------------------- data loss
def test_a_run_that_writes_nothing_never_replaces_a_kept_base(trained):
    proj, _ = trained
    kept = lora_run(proj)
    before = sha(kept)
    assert run(proj, 'gpt.py', *TINY, '--max_iters=10').returncode == 0  # out/ckpt.pt is now another model
    assert sha(proj / 'out' / 'ckpt.pt') != before
    again = ['--init_from=out/ckpt.pt', '--lora_rank=4', '--out_dir=out-lora']
    assert run(proj, 'gpt.py', *again, '--max_iters=0', '--max_new_tokens=3').returncode == 0  # samples
    assert run(proj, 'gpt.py', *again, '--eval_only=true').returncode == 0
    assert 'vocabulary' in one_line_error(run(proj, 'gpt.py', *again, '--max_iters=0', '--prompt=\u20ac'))
    assert run(proj, 'look.py', 'out/ckpt.pt', '--lora_rank=4', '--out=page.html', '--whole_split=false',
               '--windows=2').returncode == 0
    assert sha(kept) == before
    assert whole_split(run(proj, 'gpt.py', '--init_from=resume', '--out_dir=out-lora', '--eval_only=true'))
    # a run that trains there on another base would replace the base that out-lora/ckpt.pt names: refused
    msg = one_line_error(run(proj, 'gpt.py', *TINY, *again, '--max_iters=5'))
    assert 'out-lora' in msg and 'base' in msg
    assert sha(kept) == before


def test_look_never_writes_over_a_file_of_the_project(trained):
    proj, _ = trained
    shutil.copy(os.path.join(os.path.dirname(__file__), '..', 'look_page.html'), proj / 'look_page.html')
    for target in ('look_page.html', 'gpt.py'):
        target_sha = sha(proj / target)
        msg = one_line_error(run(proj, 'look.py', 'out/ckpt.pt', f'--out={target}'))
        assert target in msg
        assert sha(proj / target) == target_sha
    # a page of its own is written again
    args = ['out/ckpt.pt', '--out=page.html', '--whole_split=false', '--windows=2']
    assert run(proj, 'look.py', *args).returncode == 0
    assert run(proj, 'look.py', *args).returncode == 0


def test_a_template_without_its_placeholder_is_an_error(trained, tmp_path, monkeypatch):
    import look
    page = tmp_path / 'template.html'
    page.write_text('<html>no data here</html>')
    monkeypatch.setattr(look, 'PAGE', str(page))
    with pytest.raises(SystemExit) as e:
        look.write_page({'tokens': []}, str(tmp_path / 'x.html'))
    assert 'placeholder' in str(e.value.code)
    assert not (tmp_path / 'x.html').exists()


def test_a_lora_run_can_be_copied_and_moved(trained):
    proj, _ = trained
    lora_run(proj, 'out_b')
    first = whole_split(run(proj, 'gpt.py', '--init_from=resume', '--out_dir=out_b', '--eval_only=true'))
    shutil.copytree(proj / 'out_b', proj / 'out_c', symlinks=True)
    shutil.move(proj / 'out_b', proj / 'moved_away')
    shutil.move(proj / 'out', proj / 'out_gone')  # the original base is gone too
    assert whole_split(run(proj, 'gpt.py', '--init_from=resume', '--out_dir=out_c', '--eval_only=true')) == first
    assert whole_split(run(proj, 'gpt.py', '--init_from=out_c/ckpt.pt', '--eval_only=true')) == first


# ------------------------------------------------------------------------------------------- sweeps
def test_sweep_folders_never_collide(proj):
    configs, swept, fixed, seeds, out_dir, jobs = sweep.parse(
        ['--init_from=/x/a_b/ckpt.pt,/x/a/b/ckpt.pt,/x/a b/ckpt.pt', '--max_iters=0', '--out_dir=sw'])
    folders = []
    for values in swept['init_from']:
        folders.append(sweep.folder_of(out_dir, {'init_from': values}, 1337))
    assert len(set(folders)) == 3
    assert all(f.startswith(os.path.join('sw', 'init_from=')) for f in folders)


def test_the_same_fixed_knobs_in_another_order_are_the_same_command(proj, monkeypatch):
    monkeypatch.setattr(sweep, 'ROOT', str(proj))
    monkeypatch.chdir(proj)
    one = sweep.command_record([], ['--n_head=2', '--n_embd=32', '--seed=1'])
    other = sweep.command_record([], ['--n_embd=32', '--n_head=2', '--seed=1'])
    assert one == other
    assert sweep.command_record([], ['--n_head=2', '--n_head=4']) != sweep.command_record([], ['--n_head=4', '--n_head=2'])


def test_a_sweeps_error_says_error_once(proj, monkeypatch, capsys):
    monkeypatch.setattr(sweep, 'ROOT', str(proj))
    with pytest.raises(SystemExit) as e:
        sweep.main(['--n_layr=1,2'])
    assert str(e.value.code).count('error:') == 1


@pytest.mark.slow
def test_the_runs_of_a_killed_sweep_die_with_it(proj):
    p = subprocess.Popen([sys.executable, 'sweep.py', *TINY, '--max_iters=100000', '--eval_interval=1000',
                          '--out_dir=sw'], cwd=proj, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = proj / 'sw' / 'seed=1337' / 'run.lock'
    deadline = time.time() + 60
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith('process ')):
        time.sleep(0.1)
    child = int(lock.read_text().split()[1])
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 60
    while time.time() < deadline and os.path.exists(f'/proc/{child}') and 'Z' not in state_of(child):
        time.sleep(0.1)
    assert not os.path.exists(f'/proc/{child}') or 'Z' in state_of(child), 'gpt.py outlived its sweep'


def state_of(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return 'gone'


# ---------------------------------------------------------------------------------- roads.py timing
def test_the_median_of_alternating_samples_decides_and_a_disagreeing_timing_is_not_kept(cache, monkeypatch):
    # one slow outlier of bf16's can't make it look slower, or one of float32's make bf16 look faster
    samples = {'float32': [1.0, 1.0, 9.0, 1.0, 1.0], 'bfloat16': [0.5, 0.5, 0.5, 0.5, 0.5]}
    monkeypatch.setattr(roads, 'samples', lambda candidates: samples)
    road, why = roads.decide('k', dict.fromkeys(samples), 'float32', True)
    assert road == 'bfloat16'
    assert not cache.exists() and 'not kept' in why  # the samples disagreed: the next run measures again
    samples['float32'] = [1.0, 1.02, 0.99, 1.01, 1.0]
    road, why = roads.decide('k', dict.fromkeys(samples), 'float32', True)
    assert road == 'bfloat16' and cache.exists()


def test_samples_alternate_and_count_at_least_three(monkeypatch):
    order = []
    candidates = {'a': lambda: order.append('a'), 'b': lambda: order.append('b')}
    times = roads.samples(candidates, budget_s=0.0)
    assert all(len(t) >= 3 for t in times.values())
    assert order[2:8] == ['a', 'b'] * 3  # after one warm-up call each


def test_measuring_again_is_one_environment_variable(cache, monkeypatch):
    monkeypatch.setattr(roads, 'samples', lambda candidates: {'float32': [1.0] * 3, 'bfloat16': [0.5] * 3})
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[0] == 'bfloat16'
    monkeypatch.setattr(roads, 'samples', lambda candidates: {'float32': [0.5] * 3, 'bfloat16': [1.0] * 3})
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[0] == 'bfloat16'  # kept
    monkeypatch.setenv('MINIGPT_MEASURE_AGAIN', '1')
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[0] == 'float32'
    monkeypatch.delenv('MINIGPT_MEASURE_AGAIN')
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[0] == 'float32'


def test_two_writers_of_the_cache_lose_nothing(tmp_path):
    path = tmp_path / 'roads.json'
    code = ("import roads, sys\n"
            "for i in range(100):\n"
            "    roads.remember(f'{sys.argv[1]} {i}', {'road': 'float32'})\n")
    env = {**os.environ, 'MINIGPT_ROADS': str(path)}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, '-c', code, name], cwd=repo, env=env) for name in 'ab']
    assert [p.wait() for p in procs] == [0, 0]
    assert len(json.loads(path.read_text())) == 200
    assert sorted(os.listdir(tmp_path)) == ['roads.json', 'roads.json.lock']


def test_a_bare_cache_name_and_a_folder_in_its_place(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(roads, 'CACHE', 'myroads.json')
    roads.remember('k', {'road': 'float32'})
    assert json.loads((tmp_path / 'myroads.json').read_text()) == {'k': {'road': 'float32'}}
    (tmp_path / 'adir').mkdir()
    monkeypatch.setattr(roads, 'CACHE', str(tmp_path / 'adir'))
    roads.remember('k', {'road': 'float32'})
    assert 'could not keep' in capsys.readouterr().out
    assert not [f for f in os.listdir(tmp_path) if 'tmp' in f]


def test_an_unreadable_cache_is_said_before_it_is_replaced(cache, monkeypatch, capsys):
    cache.parent.mkdir()
    cache.write_text('{not json')
    monkeypatch.setattr(roads, 'samples', lambda candidates: {'float32': [1.0] * 3, 'bfloat16': [0.5] * 3})
    roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)
    assert 'could not be read' in capsys.readouterr().out


@pytest.mark.parametrize('faster, expected', [('float', 'float'), ('kernel', 'kernel')])
def test_int8_auto_takes_the_faster_exact_road(trained, monkeypatch, faster, expected):
    import quant
    import torch
    monkeypatch.setattr(quant, 'int8_kernel_is_exact', lambda: True)
    other = {'float': 'kernel', 'kernel': 'float'}[faster]
    monkeypatch.setattr(roads, 'samples', lambda candidates: {faster: [0.1] * 3, other: [0.3] * 3})
    layer = quant.Int8Linear(torch.nn.Linear(8, 8))
    holder = torch.nn.Sequential(layer)
    line = roads.int8(holder, 'auto', lambda: None)
    assert layer.road == expected and f'int8 on the {expected} road' in line


def test_bench_honours_int8_road(proj):
    import bench
    import gpt
    model = gpt.GPT(gpt.GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=32))
    saved = (bench.gen_tokens, bench.gen_repeats)
    bench.gen_tokens, bench.gen_repeats = 3, 1
    try:
        rows, int8 = bench.bench_sampling(model, 'cpu', 'float')
    finally:
        bench.gen_tokens, bench.gen_repeats = saved
    assert 'int8 on the float road (as asked)' in int8


# ------------------------------------------------------------------------------- the same figure once
def test_a_checkpoint_is_evaluated_in_its_own_precision(trained, monkeypatch):
    proj, _ = trained
    monkeypatch.setattr(roads, 'samples', lambda candidates: {n: [{'float32': 1.0}.get(n, 0.1)] * 3
                                                               for n in candidates})
    resumed = run(proj, 'gpt.py', '--init_from=resume', '--eval_only=true')
    loaded = run(proj, 'gpt.py', '--init_from=out/ckpt.pt', '--eval_only=true')
    assert whole_split(resumed) == whole_split(loaded)
    assert 'dtype: float32' in loaded.stdout and "checkpoint's own" in loaded.stdout


# ------------------------------------------------------------------------------------ log.csv
def log_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_a_resume_after_a_crash_drops_the_rows_past_its_checkpoint(trained):
    proj, _ = trained
    log = proj / 'out' / 'log.csv'
    rows = log_rows(log)
    step = max(int(r['iter']) for r in rows)
    with open(log, 'a') as f:  # what a run killed after step 20 leaves: rows past its checkpoint, a cut line
        f.write(f"train,{step + 5},0,1.0,0.001,3.0,,,10,1,0,0.001\n")
        f.write(f"train,{step + 10},0,1.0,0.0")
    r = run(proj, 'gpt.py', *TINY, '--init_from=resume', f'--max_iters={step + 10}', '--dropout=0.1')
    assert r.returncode == 0, r.stderr
    rows = log_rows(log)
    keys = [(r['kind'], r['iter']) for r in rows]
    assert len(keys) == len(set(keys)), keys
    assert all(len(r) == len(rows[0]) and None not in r.values() for r in rows)
    assert [k for k in keys if k[0] == 'final'] == [('final', str(step + 10))]
    r = run(proj, 'gpt.py', *TINY, '--init_from=resume', f'--max_iters={step + 10}', '--dropout=0.1')
    assert r.returncode == 0, r.stderr
    assert [k for k in ((r['kind'], r['iter']) for r in log_rows(log)) if k[0] == 'final'] == \
        [('final', str(step + 10))]


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize('args, message', [
    (['--init_from=out/ckpt.pt', '--lora_rank=4', '--out_dir=o2', '--newton_schulz=bfloat16', '--max_iters=5'],
     'newton_schulz'),
    (['--decay_lr=false', '--lr_decay_iters=100'], 'decay_lr'),
    (['--decay_lr=false', '--schedule=cosine'], 'decay_lr'),
])
def test_a_setting_that_would_be_ignored_is_refused(trained, args, message):
    proj, _ = trained
    assert message in one_line_error(run(proj, 'gpt.py', *TINY, *args))


def test_no_tokens_no_rate_line(trained):
    proj, _ = trained
    r = run(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', '--max_new_tokens=0')
    assert r.returncode == 0 and 'tokens in' not in r.stderr


# ------------------------------------------------------------------------------------ look.py
@pytest.mark.parametrize('args, message', [
    (['--text_file=missing.txt'], 'missing.txt'),
    (['--text_file=out'], 'out'),
    (['--quantize=int4'], 'quantize'),
    (['--quantize=int8', '--int8_road=bogus'], 'int8_road'),
    (['--quantize=nf4', '--int8_road=kernel'], 'int8_road'),
    (['--top_k=-5'], 'top_k'),
    (['--windows=100000000'], 'windows'),
    (['--out=no/such/folder/x.html'], 'no/such/folder'),
    (['--prompt=First', '--text_file=corpus.txt'], 'text_file'),
    (['--dtype=bfloat16'], 'dtype'),
    (['--device=cuda'], 'device'),
])
def test_look_refuses_in_one_line_before_any_work(trained, args, message):
    proj, _ = trained
    r = run(proj, 'look.py', 'out/ckpt.pt', *args)
    assert message in one_line_error(r)
    assert 'model:' not in r.stdout  # refused before the model is built
    assert not list(proj.glob('**/*.html'))


def test_look_names_what_it_was_given(trained):
    proj, _ = trained
    assert 'no file or folder' in one_line_error(run(proj, 'look.py', 'nothing/here'))
    msg = one_line_error(run(proj, 'look.py', 'out'))
    assert 'out/ckpt.pt' in msg and '--init_from' not in msg
    (proj / 'empty.txt').write_text('')
    msg = one_line_error(run(proj, 'look.py', 'out/ckpt.pt', '--text_file=empty.txt'))
    assert 'empty.txt' in msg and '--prompt' not in msg


def test_look_help_lists_its_own_knobs(trained):
    proj, _ = trained
    r = run(proj, 'look.py', '--help')
    assert r.returncode == 0
    for own in ('text_file', 'n_tokens', 'windows', 'whole_split'):
        assert own in r.stdout
    assert 'gradient_accumulation_steps' not in r.stdout


def test_look_says_when_it_crops_the_text(trained):
    proj, _ = trained
    r = run(proj, 'look.py', 'out/ckpt.pt', '--prompt=' + 'First ' * 100, '--out=p.html', '--whole_split=false',
            '--windows=2')
    assert r.returncode == 0, r.stderr
    assert 'first 16' in r.stdout


def test_a_qlora_page_says_its_base_is_quantized(trained):
    proj, _ = trained
    r = run(proj, 'gpt.py', *TINY, '--init_from=out/ckpt.pt', '--lora_rank=4', '--quantize=nf4', '--out_dir=q',
            '--max_iters=5')
    assert r.returncode == 0, r.stderr
    r = run(proj, 'look.py', 'q/ckpt.pt', '--out=q.html', '--whole_split=false', '--windows=2')
    assert r.returncode == 0, r.stderr
    html = (proj / 'q.html').read_text()
    assert '"quantize":"nf4"' in html


# ------------------------------------------------------------------------------- the attention switch
@pytest.mark.parametrize('args', [['--attention=false'], ['--attention=false', '--rope=false'],
                                  ['--attention=false', '--rope=false', '--qk_norm=false', '--causal=false']])
def test_attention_false_refuses_what_acts_on_attention(proj, args):
    msg = one_line_error(run(proj, 'gpt.py', *TINY, '--max_iters=5', *args))
    assert 'attention=False' in msg


def test_a_model_without_attention_trains_and_says_so_in_one_line_where_it_has_none_to_show(proj):
    args = ['--attention=false', '--rope=false', '--qk_norm=false', '--max_iters=20']
    r = run(proj, 'gpt.py', *TINY, *args)
    assert r.returncode == 0, r.stderr
    assert 'no attention' in one_line_error(run(proj, 'look.py', 'out/ckpt.pt'))
    assert 'no attention' in one_line_error(run(proj, 'plot.py', '--attention=out/ckpt.pt'))
