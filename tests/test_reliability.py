"""Faults never lose work: Ctrl-C and SIGTERM save and resume exactly, kill -9 leaves a loadable
checkpoint, a non-finite loss stops without saving."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import TINY, one_line_error, run, run_process, val_lines

LONG = [*TINY, '--max_iters=1000000', '--lr_decay_iters=1000', '--eval_interval=1000000', '--dropout=0.1']


def start(proj, *args, script='gpt.py'):
    return subprocess.Popen([sys.executable, script, *args], cwd=proj, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def wait_for(proc, pattern):
    """Read the process's output until a line matches; return everything read."""
    seen = ''
    for line in proc.stdout:
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"never printed {pattern!r}:\n{seen}\n{proc.stderr.read()}")


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_last_step_and_resume_is_exact(proj, sig):
    proc = start(proj, *LONG, '--log_interval=1')
    out = wait_for(proc, r'^iter 12:')
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)
    out += rest
    assert proc.returncode == 128 + sig and 'Traceback' not in err, err
    step = int(re.search(rf'{sig.name} at step (\d+): saved', out).group(1))
    assert step >= 12 and '--init_from=resume' in out
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == step
    # resuming to step + 10 gives exactly what an uninterrupted run to step + 10 gives
    end = [*LONG, f'--max_iters={step + 10}']
    resumed = run(proj, 'gpt.py', *end, '--init_from=resume')
    straight = run(proj, 'gpt.py', *end, '--out_dir=straight')
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert val_lines(resumed.stdout) == val_lines(straight.stdout)[-1:]
    assert val_lines(resumed.stdout)[0].startswith(f'step {step + 10}:')


@pytest.mark.slow
def test_kill_9_always_leaves_a_loadable_checkpoint(proj):
    # a checkpoint every step, so that the kills land in the middle of saves too
    args = [*TINY, '--max_iters=1000000', '--eval_interval=1', '--eval_iters=1', '--log_interval=1']
    rng, last = random.Random(0), 0
    for attempt in range(6):
        proc = start(proj, *args, *(['--init_from=resume'] if attempt else []))
        wait_for(proc, r'^iter \d+:')
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate(timeout=60)
        ckpt = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)
        assert ckpt['iter_num'] >= last  # each run resumed the last one and went on
        last = ckpt['iter_num']
    assert last > 6


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(proj):
    assert run(proj, 'gpt.py', *TINY, '--max_iters=10').returncode == 0
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    r = run(proj, 'gpt.py', *TINY, '--init_from=resume', '--max_iters=200', '--learning_rate=1e30',
            '--min_lr=1e30', '--grad_clip=0', '--warmup_iters=0')
    assert 'not finite at step' in one_line_error(r) and 'ckpt.pt keeps step 10' in one_line_error(r)
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before
    r = run(proj, 'gpt.py', *TINY, '--max_iters=200', '--learning_rate=1e30', '--min_lr=1e30', '--grad_clip=0',
            '--warmup_iters=0', '--out_dir=fresh')  # before its first save: it says that there is none
    assert one_line_error(r).endswith('no checkpoint was written. Try a lower learning_rate')
    assert not (proj / 'fresh' / 'ckpt.pt').exists()


@pytest.mark.slow
@pytest.mark.parametrize('script', ['gpt.py', 'bigram.py'])
def test_one_run_at_a_time_in_an_out_dir(proj, script):
    """A second run on a busy out_dir is refused and names the first, which goes on untouched; after kill -9
    nothing is left that blocks the next run."""
    args = [*LONG, '--log_interval=1'] if script == 'gpt.py' else ['--max_iters=1000000', '--eval_interval=1',
                                                                    '--eval_iters=1', '--out_dir=out']
    first = start(proj, *args, script=script)
    wait_for(first, r'^(iter|step) 3:')
    msg = one_line_error(run(proj, script, *args[:-2], '--max_iters=5', '--out_dir=out'))
    assert f'out is in use by process {first.pid}' in msg
    wait_for(first, r'^(iter|step) 6:')  # the first run goes on
    assert first.poll() is None
    first.kill()  # kill -9
    first.communicate()
    r = run(proj, script, *args[:-2], '--max_iters=5', '--out_dir=out', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr


# Faults on disk: every write to /dev/full fails with ENOSPC, as on a full disk. A temp file that is a link
# to it puts the next save of that file on a full disk, and leaves every other file where it was.
needs_dev_full = pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')


@needs_dev_full
@pytest.mark.parametrize('script, out', [('gpt.py', 'out'), ('bigram.py', 'out-bigram')])
def test_full_disk_while_saving_keeps_the_last_checkpoint(proj, script, out):
    args = [*(TINY if script == 'gpt.py' else ['--batch_size=8', '--block_size=8', '--eval_iters=2']),
            '--eval_interval=10', '--max_new_tokens=5']
    assert run(proj, script, *args, '--max_iters=10').returncode == 0
    ckpt = proj / out / 'ckpt.pt'
    before = ckpt.read_bytes()
    os.symlink('/dev/full', proj / out / 'ckpt.pt.tmp')
    msg = one_line_error(run(proj, script, *args, '--max_iters=20', '--init_from=resume'))
    assert 'No space left on device' in msg and 'keeps the last good state' in msg, msg
    assert ckpt.read_bytes() == before and not os.path.lexists(proj / out / 'ckpt.pt.tmp')  # nothing partial
    r = run(proj, script, *args, '--max_iters=20', '--init_from=resume')  # space again: it resumes from step 10
    assert r.returncode == 0 and 'resumed from' in r.stdout and 'at step 10' in r.stdout, r.stderr


@pytest.mark.slow
@needs_dev_full
def test_full_disk_is_one_line_in_a_real_process(trained):
    proj, _ = trained
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    os.symlink('/dev/full', proj / 'out' / 'ckpt.pt.tmp')
    r = run_process(proj, 'gpt.py', *TINY, '--init_from=resume', '--max_iters=30', '--lr_decay_iters=40')
    assert 'No space left on device' in one_line_error(r)
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before and not os.path.lexists(proj / 'out' / 'ckpt.pt.tmp')


@needs_dev_full
def test_full_disk_while_preparing_keeps_the_old_dataset(proj):
    folder = proj / 'data' / 'shakespeare_char'
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    os.symlink('/dev/full', folder / 'val.bin.tmp')
    (proj / 'other.txt').write_text('abcdefghij\n' * 200)
    msg = one_line_error(run(proj, 'prepare.py', '--input=other.txt'))
    assert 'No space left on device' in msg and 'nothing was changed' in msg and 'val.bin' in msg
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before  # no new train.bin beside the old meta.json


def test_out_dir_that_cannot_be_written(trained):
    # a file where a folder should be: root can write anywhere else, so this is the fault a test can make
    proj, _ = trained
    (proj / 'afile').write_text('a file, not a folder')
    r = run(proj, 'gpt.py', *TINY, '--max_iters=20', '--out_dir=afile/out')
    assert 'Not a directory' in one_line_error(r) and 'give another --out_dir' in r.stderr
    assert 'step 0:' not in r.stdout  # refused before anything trained
    msg = one_line_error(run(proj, 'bigram.py', '--max_iters=10', '--eval_interval=5', '--eval_iters=2',
                             '--out_dir=afile/out'))
    assert 'Not a directory' in msg and 'give another --out_dir' in msg  # refused before training too
    assert (proj / 'afile').read_text() == 'a file, not a folder'


def test_data_that_does_not_match_its_meta_json(proj):
    folder = proj / 'data' / 'shakespeare_char'
    np.full(1000, 300, dtype=np.uint16).tofile(folder / 'train.bin')  # ids from a bigger vocabulary
    for script in ('gpt.py', 'bigram.py'):
        r = run(proj, script, '--max_iters=5')
        assert 'train.bin does not match its meta.json' in one_line_error(r) and 'step 0' not in r.stdout


@pytest.mark.slow
def test_ctrl_c_while_sampling_after_training_exits_130(proj):
    # train() puts back the handlers it replaced, so Ctrl-C while sampling ends the run quietly
    proc = start(proj, *TINY, '--max_iters=10', '--max_new_tokens=1000000', '--kv_cache=false')
    wait_for(proc, r'^whole-split val loss')
    time.sleep(0.5)  # well into sampling
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'Traceback' not in err, err
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 10
