"""
What a gpt.py run says as it goes: how many tokens (and FLOPs) a step is, the progress line (loss,
rate, tokens a second, MFU where the GPU's peak is known, eta) and log.csv's rows, one per progress
line, eval and final evaluation (checkpoint.LOG_COLUMNS). plot.py, sweep.py, bench.py and look.py
read them back with checkpoint.read_log. It never imports gpt: the run's state and knobs (k) come
in as arguments.
"""
import os

import torch

from checkpoint import log_row, trim_log
from machine import flops_per_token, peak_flops


def begin_log(run, model, state, k):
    """What a step is (tokens; FLOPs for MFU), and log.csv's header: an unwritable out_dir stops."""
    T = model.block_size
    state.tokens_per_iter = k.batch_size * T * k.gradient_accumulation_steps * run.world_size
    run.log(f"tokens per optimizer step: {state.tokens_per_iter:,} = batch_size {k.batch_size} x "
            f"block_size {T} x gradient_accumulation_steps {k.gradient_accumulation_steps} x processes "
            f"{run.world_size}")
    n_params = sum(p.numel() for p in model.parameters())
    per_token = flops_per_token(n_params, len(model.blocks), model.wte.embedding_dim, T)
    state.flops_per_iter = per_token * state.tokens_per_iter
    log = os.path.join(os.path.dirname(state.ckpt_path), 'log.csv')
    if k.init_from != 'resume' or not os.path.exists(log):
        write_csv(run, state, 'header')
    elif run.master:  # as the checkpoint left it: rows a crash wrote after it go
        trim_log(log, state.iter_num)


def log_progress(run, state, loss, dt, k):
    """The progress line and its row in log.csv; dt: a step's time, over the last log_interval."""
    # what is left: the steps, and the evals still due, each as long as the last one
    evals_left = k.max_iters // k.eval_interval - state.iter_num // k.eval_interval
    if k.max_iters % k.eval_interval:
        evals_left += 1  # the last step evaluates too
    eta = (k.max_iters - state.iter_num) * dt + evals_left * state.eval_s
    if k.max_time > 0:
        eta = min(eta, k.max_time - state.train_time)
    mfu = ''
    peak = peak_flops(run.dev_type)  # machine.py knows a few GPUs' peak
    if peak:
        mfu = f", mfu {100 * state.flops_per_iter / dt / peak:.1f}%"
    print(f"iter {state.iter_num}: loss {loss:.4f}, lr {state.lr:.2e}, {dt * 1000:.1f} ms/iter, "
          f"{state.tokens_per_iter / dt:,.0f} tok/s{mfu}, eta {eta:.0f}s")
    norms = torch.tensor(state.norms)  # the interval's gradient norms before clipping: its health
    clipped = 0.0  # the share of the interval's steps clipped
    if k.grad_clip > 0:
        clipped = (norms > k.grad_clip).float().mean().item()
    write_csv(run, state, 'train', train_loss=loss, step_ms=dt * 1000, grad_norm=norms.mean().item(),
              clipped=clipped, update_ratio=state.update_ratio)
    state.norms = []


def write_csv(run, state, kind, **values):
    """Process 0 adds a row to <out_dir>/log.csv (checkpoint.LOG_COLUMNS): 'train' (progress),
    'eval' (the step lines), 'final' (whole split), or the 'header' of a new file."""
    row = dict(kind=kind, iter=state.iter_num, tokens=state.iter_num * state.tokens_per_iter,
               time_s=state.train_time, lr=state.lr, **values)
    if run.master:
        path = os.path.join(os.path.dirname(state.ckpt_path), 'log.csv')
        log_row(path, row, new=kind == 'header')
