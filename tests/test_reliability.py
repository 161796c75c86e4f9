"""Faults never lose work: Ctrl-C and SIGTERM save and resume exactly, kill -9 leaves a loadable
checkpoint, a non-finite loss stops without saving."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import one_line_error, run
from test_gpt_script import TINY, val_lines

LONG = [*TINY, '--max_iters=1000000', '--lr_decay_iters=1000', '--eval_interval=1000000', '--dropout=0.1']


def start(proj, *args):
    return subprocess.Popen([sys.executable, 'gpt.py', *args], cwd=proj, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def wait_for(proc, pattern):
    """Read the process's output until a line matches; return everything read."""
    seen = ''
    for line in proc.stdout:
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"never printed {pattern!r}:\n{seen}\n{proc.stderr.read()}")


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
    assert 'not finite at step' in one_line_error(r)
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before
