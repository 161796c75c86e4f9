"""The same gpt.py under torchrun: 2 CPU processes with gloo."""
import os
import re
import signal
import subprocess
import sys

import torch

import pytest

from conftest import TINY, run, val_lines

pytestmark = pytest.mark.slow  # torchrun starts processes that each import torch

TORCHRUN = ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
ENV = {'OMP_NUM_THREADS': '1'}


def test_two_processes_train_log_once_save_once_and_resume_exactly(proj):
    args = [*TINY, '--device=cpu', '--lr_decay_iters=30', '--dropout=0.1']
    r = run(proj, *TORCHRUN, 'gpt.py', *args, '--max_iters=20', env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [l.split(':')[0] for l in val_lines(r.stdout)] == ['step 0', 'step 10', 'step 20']
    assert 'x processes 2' in r.stdout and r.stdout.count('whole-split val loss') == 1
    assert sorted(os.listdir(proj / 'out')) == ['best.pt', 'ckpt.pt', 'log.csv', 'run.lock']  # one writer: process 0
    # resume under DDP: every process gets its own dropout stream back, so it matches a run straight through
    resumed = run(proj, *TORCHRUN, 'gpt.py', *args, '--max_iters=30', '--init_from=resume', env=ENV)
    straight = run(proj, *TORCHRUN, 'gpt.py', *args, '--max_iters=30', '--out_dir=straight', env=ENV)
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr[-3000:] + straight.stderr[-3000:]
    assert [l.split(':')[0] for l in val_lines(resumed.stdout)] == ['step 30']
    a, b = (torch.load(proj / d / 'ckpt.pt', weights_only=True)['model'] for d in ('out', 'straight'))
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_accumulation_equals_data_parallel(proj):
    """One process accumulating 2 micro-batches trains the same model as 2 processes with 1 each."""
    args = [*TINY, '--device=cpu', '--max_iters=15', '--dropout=0']
    single = run(proj, 'gpt.py', *args, '--gradient_accumulation_steps=2', '--out_dir=single', env=ENV)
    ddp = run(proj, *TORCHRUN, 'gpt.py', *args, '--out_dir=ddp', env=ENV)
    assert single.returncode == 0 and ddp.returncode == 0, single.stderr + ddp.stderr[-3000:]
    a, b = (torch.load(proj / d / 'ckpt.pt', weights_only=True)['model'] for d in ('single', 'ddp'))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name
    assert 'tokens per optimizer step: 256' in single.stdout and 'tokens per optimizer step: 256' in ddp.stdout


def test_ctrl_c_stops_every_rank(proj):
    proc = subprocess.Popen([sys.executable, *TORCHRUN, 'gpt.py', *TINY, '--device=cpu', '--max_iters=1000000',
                             '--log_interval=1'], cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **ENV, 'PYTHONUNBUFFERED': '1'}, start_new_session=True)
    out = ''
    for line in proc.stdout:
        out += line
        if line.startswith('iter 5:'):
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process in the group
    rest, err = proc.communicate(timeout=120)
    out += rest
    assert proc.returncode != 0
    step = int(re.search(r'SIGINT at step (\d+): saved', out).group(1))
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == step


def test_one_process_paths_end_under_torchrun_and_print_once(proj):
    """Export (a LoRA merge too), eval_only and sample-only run and end under torchrun; process 0 alone prints."""
    args = [*TINY, '--device=cpu', '--max_new_tokens=5']
    assert run(proj, 'gpt.py', *args, '--max_iters=10').returncode == 0
    ddp = lambda *more: run(proj, *TORCHRUN, 'gpt.py', *args, *more, env=ENV, timeout=180)
    lora = ddp('--init_from=out/ckpt.pt', '--lora_rank=2', '--max_iters=10', '--out_dir=lora')
    assert lora.returncode == 0, lora.stderr[-3000:]
    for source, out in (('out/ckpt.pt', 'exp'), ('lora/ckpt.pt', 'merged')):
        r = ddp(f'--init_from={source}', '--max_iters=0', '--export=true', f'--out_dir={out}')
        assert r.returncode == 0 and r.stdout.count('wrote ') == 1, r.stderr[-3000:]
        assert r.stdout.count('---------------') == 1
        ckpt = torch.load(proj / out / 'ckpt.pt', weights_only=True)
        assert 'lora' not in ckpt and ckpt['rng']['torch'].shape[0] == 2  # both processes' RNG states
    ev = ddp('--init_from=resume', '--eval_only=true', '--out_dir=merged')
    assert ev.returncode == 0 and ev.stdout.count('whole-split val loss') == 1, ev.stderr[-3000:]
    sample = ddp('--init_from=resume', '--max_iters=0', '--out_dir=exp')
    assert sample.returncode == 0 and sample.stdout.count('---------------') == 1, sample.stderr[-3000:]
