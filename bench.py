"""
Benchmark any gpt.py config: training speed, MFU, val loss after a fixed wall-clock budget,
generation speed with and without the KV cache, in fp32, int8 and NF4 weights, at batch 1 and 8
(--num_samples=8 draws its samples as one batch), and peak memory.
Prints a table.

    python bench.py                                   # gpt.py's defaults, 60 s of training
    python bench.py config/lecture_gpu.py --device=cuda --budget=120
    python bench.py config/lecture_gpu.py --train=false --device=cpu   # generation only

    python bench.py --profile=true                    # where a training step's time goes, by part

Training runs the real gpt.py in a subprocess with --max_time=budget; generation times
gpt.generate in this process; the profile runs gpt.train_step itself under torch.profiler, with
forward hooks on the modules and PyTorch's own ranges for the rest. A benchmark measures; it is never
a test.
"""
import copy
import math
import os
from collections import defaultdict
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

import gpt
import machine
import quant
import roads
from checkpoint import load_checkpoint, read_log
from checks import die, value_problems
from configurator import configure, knobs
from machine import pick_device

# -----------------------------------------------------------------------------
budget = 60.0  # seconds of training
train = True  # False: only time generation (random weights)
gen_tokens = 500  # tokens per generation timing
gen_repeats = 3  # timings per setting; the median is reported
peak_flops = 0.0  # your device's peak FLOP/s, for an MFU estimate where gpt.py knows none (CPUs)
profile = False  # True: where a training step's time goes, by part, instead of the benchmark
profile_steps = 20  # optimizer steps timed by the profile (after 3 to warm up)
# -----------------------------------------------------------------------------


def timed(fn, dev):
    t0 = time.perf_counter()
    fn()
    if dev.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_training(gpt_args, tmp):
    """Run the real gpt.py for `budget` seconds; its speed, MFU, loss and memory (read
    from its log.csv), and its checkpoint."""
    cmd = [sys.executable, os.path.join(gpt.ROOT, 'gpt.py'), *gpt_args, f'--max_time={budget}',
           '--max_iters=1000000000', f'--out_dir={tmp}', '--max_new_tokens=0']
    print('running:', ' '.join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or [f"exit {r.returncode}"]
        die(f"gpt.py failed: {lines[-1]}")
    rows = read_log(os.path.join(tmp, 'log.csv'))  # checkpoint.py: the one reader of log.csv
    train_rows = [row for row in rows if row['kind'] == 'train'][1:]  # the first interval warms up
    final = [row for row in rows if row['kind'] == 'final'][-1]
    tokens_per_iter = final['tokens'] // max(final['iter'], 1)
    step_s = statistics.median([float(row['step_ms']) for row in train_rows] or [math.nan]) / 1000
    ckpt = load_checkpoint(os.path.join(tmp, 'ckpt.pt'), 'gpt')
    args, tok_s = ckpt['model_args'], tokens_per_iter / step_s
    # a tied head is the token embedding: counted once
    n_params = sum(v.numel() for k, v in ckpt['model'].items() if k != 'lm_head.weight' or not args['tie_weights'])
    per_token = machine.flops_per_token(n_params, args['n_layer'], args['n_embd'], args['block_size'])
    flops = tok_s * per_token
    peak = peak_flops or machine.peak_flops('cuda' if torch.cuda.is_available() else 'cpu')
    mfu = 'n/a (give --peak_flops=)'
    if peak:
        mfu = f"{100 * flops / peak:.1f}%"
    rows = [('training tokens/s (median of the log intervals after the first)', f"{tok_s:,.0f}"),
            ('achieved training FLOP/s (6N + 12LCT per token)', f"{flops / 1e9:,.1f} GFLOP/s"),
            ('estimated MFU', mfu),
            ('optimizer steps in the budget', f"{final['iter']:.0f} in {final['time_s']:.1f} s"),
            ('whole-split val loss after the budget', f"{float(final['val_loss']):.4f}"),
            ('peak host memory (RSS) of training',
             f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")]
    # a step with its share of the evals, as the budget's run had them: the whole run's pace
    step_with_evals = float(final['time_s']) / max(int(final['iter']), 1)
    return rows, ckpt, step_with_evals


def how_long_here(dev, step_s, taken, int8, k):
    """The line that says what this machine is, the roads it takes (taken: the run's checkpoint's,
    int8: roads.int8's line), and how long this config's whole run takes here (training and its
    evals, at the budget's pace)."""
    what = 'this machine'
    if dev == 'cpu':
        what = f"{machine.cpu_name()}, {torch.get_num_threads()} threads"
    minutes = k.max_iters * step_s / 60
    if k.max_time > 0:
        minutes = min(minutes, k.max_time / 60)
    return (f"here: {what}; dtype {taken['dtype']}; Newton-Schulz in {taken['newton_schulz']}; "
            f"{int8}; a step {1000 * step_s:.0f} ms with its share of the evals; "
            f"this config's run, max_iters={k.max_iters:,}: about {minutes:.1f} minutes")


def bench_sampling(model, dev, int8_road='auto'):
    """Tokens per second of cached and uncached sampling, in fp32, int8 and NF4 weights, against the
    bandwidth of reading the weights."""
    models = {'fp32': model}
    for kind in ('int8', 'nf4'):
        models[kind] = copy.deepcopy(model)
        quant.quantize_model(models[kind], kind)
    prompt = torch.zeros((1, 1), dtype=torch.long, device=dev)
    # its road here: --int8_road's, or on 'auto' the faster of the exact roads (roads.py)
    short = lambda: gpt.generate(models['int8'], prompt, 16, temperature=0)  # what int8's roads are timed on
    int8 = roads.int8(models['int8'], int8_road, short)
    # (weights, KV cache, batch): a batch of 8 reads the weights once a step for 8 tokens
    settings = [('fp32', True, 1), ('fp32', False, 1), ('int8', True, 1), ('nf4', True, 1), ('fp32', True, 8)]
    times = {s: [] for s in settings}
    for _ in range(gen_repeats):
        for kind, cache, batch in settings:  # interleaved, so that all see the same machine state
            gen = torch.Generator(dev).manual_seed(0)
            start = prompt.expand(batch, 1)
            run = lambda: gpt.generate(models[kind], start, gen_tokens, 1.0, kv_cache=cache, generator=gen)
            times[kind, cache, batch].append(timed(run, dev))
    rate = {s[:2]: gen_tokens / statistics.median(t) for s, t in times.items() if s[2] == 1}
    batched = 8 * gen_tokens / statistics.median(times['fp32', True, 8])
    # a cached step reads every weight matrix once: the blocks' Linear
    # weights (as stored) and the head
    read = {k: quant.weight_bytes(m) + m.lm_head.weight.numel() * 4 for k, m in models.items()}
    big = torch.empty(2**26, device=dev)  # 256 MB: a copy reads and writes it once
    copy_s = min(timed(lambda: big.clone(), dev) for _ in range(5))
    rows = [(f'generation tokens/s, KV cache, fp32 ({gen_tokens} tokens, batch 1)', f"{rate['fp32', True]:,.0f}"),
            ('generation tokens/s, no cache, fp32', f"{rate['fp32', False]:,.0f}"),
            ('KV cache speed-up', f"{rate['fp32', True] / rate['fp32', False]:.1f}x"),
            ('generation tokens/s, KV cache, fp32, batch 8 (--num_samples=8)',
             f"{batched:,.0f} ({batched / rate['fp32', True]:.1f}x batch 1)")]
    for kind in ('int8', 'nf4'):
        rows.append((f'generation tokens/s, KV cache, {kind} weights', f"{rate[kind, True]:,.0f} "
                     f"({rate[kind, True] / rate['fp32', True]:.2f}x fp32)"))
    for kind in ('fp32', 'int8', 'nf4'):
        rows.append((f'weights read per cached token, {kind}', f"{read[kind] / 2**20:.2f} MiB: "
                     f"{read[kind] * rate[kind, True] / 1e9:.1f} GB/s"))
    # int8 is weight-only on either road: its greedy tokens should be those of
    # its weights dequantized to fp32
    dequantized = copy.deepcopy(model)
    for q, d in zip(models['int8'].modules(), dequantized.modules()):
        if isinstance(q, quant.Int8Linear):
            d.weight.data = q.dequantize()
    greedy = [gpt.generate(m, prompt, gen_tokens, temperature=0) for m in (models['int8'], dequantized)]
    rows.append(('int8 road on this CPU (roads.py)', int8))
    same = 'yes'
    if not torch.equal(*greedy):
        same = f"no: from token {(greedy[0] != greedy[1]).nonzero()[0, 1]}"
    rows.append((f'int8: the same {gen_tokens} greedy tokens as its weights dequantized to fp32', same))
    rows.append(("this machine's copy bandwidth (256 MB clone, read + write)",
                 f"{2 * big.numel() * 4 / copy_s / 1e9:.1f} GB/s"))
    return rows, int8


FORWARD_PARTS = {'MultiHeadAttention': 'forward: attention (with QK-norm and RoPE)',
                 'FeedForward': 'forward: feed-forward', 'LayerNorm': 'forward: norms', 'RMSNorm': 'forward: norms',
                 'Embedding': 'forward: embeddings'}


def label_parts(model):
    """Forward hooks that open a torch.profiler range around each of the model's parts (its code
    is not touched); the head is the model's lm_head."""
    def enter(module, args):
        module.profiled = torch.profiler.record_function(module.part)
        module.profiled.__enter__()

    def leave(module, args, output):
        module.profiled.__exit__(None, None, None)

    for module in model.modules():
        module.part = FORWARD_PARTS.get(type(module).__name__)
        if module is model.lm_head:
            module.part = 'forward: head'
        if module.part:
            module.register_forward_pre_hook(enter)
            module.register_forward_hook(leave)


def parts_of(events, steps):
    """Milliseconds a step by part, from the profiler's ranges: the model's parts (label_parts),
    the loss and backward (PyTorch's own ranges), each optimizer's step (PyTorch names them
    Optimizer.step#NAME.step) and Newton-Schulz (muon.py's range), inside Muon's."""
    ms = defaultdict(float)
    for e in events:
        t = e.cpu_time_total / 1000 / steps
        if e.key in FORWARD_PARTS.values() or e.key == 'forward: head':
            ms[e.key] += t
        elif e.key == 'aten::cross_entropy_loss':
            ms['forward: the loss (cross-entropy)'] += t
        elif e.key.startswith('autograd::engine::evaluate_function'):
            ms['backward'] += t
        elif e.key.startswith('Optimizer.step#'):
            ms[e.key.split('#')[1].split('.')[0] + ' step'] += t
        elif e.key == 'Muon: Newton-Schulz':
            ms['Muon: Newton-Schulz'] += t
    if 'Muon step' in ms:
        ms['Muon step'] -= ms['Muon: Newton-Schulz']  # its own share, Newton-Schulz apart
    return ms


def profile_training(k, configured):
    """Where a training step of the configured model goes, on the real data: gpt.train_step itself,
    under torch.profiler, by part."""
    run = machine.start_processes(k.device)
    data = gpt.load_data(k.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        k = SimpleNamespace(**{**vars(k), 'out_dir': tmp})  # nothing is saved there
        model, state = gpt.build_model(run, data, k, configured)
        gpt.choose_roads(run, model, data, state, True, k)  # as gpt.py: the knobs, or timed here
        optimizers = gpt.make_optimizers(run, model, state, k)
    plain = []
    for i in range(3 + profile_steps):  # the step as gpt.py runs it, nothing watching
        t0 = time.perf_counter()
        gpt.train_step(run, model, model, optimizers, data, state, k)
        plain.append(time.perf_counter() - t0)
    label_parts(model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as watched:
        t0 = time.perf_counter()
        for i in range(profile_steps):
            gpt.train_step(run, model, model, optimizers, data, state, k)
        step = (time.perf_counter() - t0) / profile_steps
    ms = parts_of(watched.key_averages(), profile_steps)
    ms['the rest (data, residual adds, clipping, Python)'] = 1000 * step - sum(ms.values())
    tokens = k.batch_size * model.block_size * k.gradient_accumulation_steps
    print(f"\nprofile: {state.model_args}, {tokens:,} tokens a step, device {run.dev}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, dtype {state.roads['dtype']}, "
          f"Newton-Schulz in {state.roads['newton_schulz']}")
    print(f"a step: {1000 * statistics.median(plain[3:]):.1f} ms as gpt.py runs it (median of {profile_steps}), "
          f"{1000 * step:.1f} ms under the profiler\n")
    print('| part | ms a step | share |\n|---|---|---|')
    for part, t in sorted(ms.items(), key=lambda kv: -kv[1]):
        print(f"| {part} | {t:.1f} | {100 * t / (1000 * step):.0f}% |")


def main(gpt_args, k, configured):
    dev = pick_device(k.device)
    if profile:
        return profile_training(k, configured)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = 'scratch'  # random weights of the configured model
        if train:
            rows, ckpt, step_s = bench_training(gpt_args, tmp)
            source = os.path.join(tmp, 'ckpt.pt')  # the budget's model
        # gpt.py's one way for a tool: the model as a run that only samples has it, in float32
        settings = SimpleNamespace(**{**vars(k), 'init_from': source, 'max_iters': 0, 'quantize': ''})
        run = machine.start_processes(k.device)
        model, state = gpt.load_model(run, gpt.load_data(k.dataset), settings, configured)
    model_args = state.model_args
    sampling, int8 = bench_sampling(model, dev, k.int8_road)
    rows += sampling
    print(f"\nbench: {model_args}, device {dev}, torch {torch.__version__}")
    print('| measure | value |\n|---|---|')
    for name, value in rows:
        print(f"| {name} | {value} |")
    if train:
        print(f"\nthe roads a training run timed are kept in {roads.CACHE}: "
              f"MINIGPT_MEASURE_AGAIN=1 times them again")
        print(how_long_here(dev, step_s, ckpt['roads'], int8, k))


if __name__ == '__main__':
    # bench.py's own knobs first; everything else is a gpt.py knob, passed on to it (a copy of its
    # knobs: gpt's own globals stay as they are)
    own = [a for a in sys.argv[1:] if a.split('=')[0].lstrip('-') in knobs(globals())]
    rest = [a for a in sys.argv[1:] if a not in own]
    configure(globals(), own)
    gpt_knobs = dict(vars(gpt))
    configure(gpt_knobs, rest)
    gpt_k = SimpleNamespace(**knobs(gpt_knobs))
    for problem in value_problems(gpt_k, gpt.ROOT):  # checks.py
        die(problem)
    main(rest, gpt_k, gpt_knobs['CONFIGURED'])
