"""
Benchmark any gpt.py config: training speed, MFU, val loss after a fixed wall-clock budget,
generation speed with and without the KV cache, in fp32, int8 and NF4 weights, and peak memory.
Prints a table.

    python bench.py                                   # gpt.py's defaults, 60 s of training
    python bench.py config/lecture_gpu.py --device=cuda --budget=120
    python bench.py config/lecture_gpu.py --train=false --device=cpu   # generation only

Training runs the real gpt.py in a subprocess with --max_time=budget; generation times
GPT.generate in this process. A benchmark measures; it is never a test.
"""
import copy
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import gpt
import quant
from configurator import configure, knobs

# -----------------------------------------------------------------------------
budget = 60.0  # seconds of training
train = True  # False: only time generation (random weights)
gen_tokens = 500  # tokens per generation timing
gen_repeats = 3  # timings per setting; the median is reported
peak_flops = 0.0  # your device's peak FLOP/s, for an MFU estimate where gpt.py knows none (CPUs)
# -----------------------------------------------------------------------------


def timed(fn, dev):
    t0 = time.perf_counter()
    fn()
    if dev.startswith('cuda'):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(gpt_args):
    rows = []
    dev = gpt.pick_device(gpt.device)
    with tempfile.TemporaryDirectory() as tmp:
        if train:
            cmd = [sys.executable, os.path.join(gpt.ROOT, 'gpt.py'), *gpt_args, f'--max_time={budget}',
                   '--max_iters=1000000000', f'--out_dir={tmp}', '--max_new_tokens=0']
            print('running:', ' '.join(cmd[1:]), flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"bench: gpt.py failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            speed = [float(x.replace(',', '')) for x in re.findall(r'([\d,]+) tok/s', r.stdout)][1:] or [0.0]
            mfu = [float(x) for x in re.findall(r'mfu ([\d.]+)%', r.stdout)][1:]
            steps = re.search(r'trained (\d+) steps in ([\d.]+)s', r.stdout)
            ckpt = gpt.load_checkpoint(os.path.join(tmp, 'ckpt.pt'), 'gpt')
            model_args, tok_s = ckpt['model_args'], statistics.median(speed)
            n_params = sum(v.numel() for k, v in ckpt['model'].items() if k != 'lm_head.weight' or not model_args['tie_weights'])
            flops = tok_s * (6 * n_params + 12 * model_args['n_layer'] * model_args['n_embd'] * model_args['block_size'])
            if not mfu and peak_flops:
                mfu = [100 * flops / peak_flops]
            rows += [('training tokens/s (median of progress lines)', f"{tok_s:,.0f}"),
                     ('achieved training FLOP/s (6N + 12LCT per token)', f"{flops / 1e9:,.1f} GFLOP/s"),
                     ('estimated MFU', f"{statistics.median(mfu):.1f}%" if mfu else 'n/a (give --peak_flops=)'),
                     ('optimizer steps in the budget', f"{steps.group(1)} in {steps.group(2)} s"),
                     ('whole-split val loss after the budget', re.search(r'whole-split val loss ([\d.]+)', r.stdout).group(1)),
                     ('peak host memory (RSS) of training', f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")]
            gpu_mem = re.search(r'peak GPU memory ([\d,]+) MiB', r.stdout)
            if gpu_mem:
                rows.append(('peak GPU memory of training', f"{gpu_mem.group(1)} MiB"))
        else:
            model_args = dict(vocab_size=65, block_size=gpt.block_size, n_layer=gpt.n_layer, n_head=gpt.n_head,
                              n_embd=gpt.n_embd, rope=gpt.rope, rmsnorm=gpt.rmsnorm, qk_norm=gpt.qk_norm,
                              relu2=gpt.relu2, tie_weights=gpt.tie_weights)
    model = gpt.GPT(**model_args).to(dev).eval()
    if train:
        model.load_state_dict(ckpt['model'])
    models = {'fp32': model}
    for kind in ('int8', 'nf4'):
        models[kind] = copy.deepcopy(model)
        quant.quantize_model(models[kind], kind)
    prompt = torch.zeros((1, 1), dtype=torch.long, device=dev)
    settings = [('fp32', True), ('fp32', False), ('int8', True), ('nf4', True)]
    times = {s: [] for s in settings}
    for _ in range(gen_repeats):
        for kind, cache in settings:  # interleaved, so that all see the same machine state
            t0 = time.perf_counter()
            models[kind].generate(prompt, gen_tokens, 1.0, kv_cache=cache, generator=torch.Generator(dev).manual_seed(0))
            if dev.startswith('cuda'):
                torch.cuda.synchronize()
            times[kind, cache].append(time.perf_counter() - t0)
    rate = {s: gen_tokens / statistics.median(t) for s, t in times.items()}
    # a cached step reads every weight matrix once: the blocks' Linear weights (as stored) and the head
    read = {k: quant.weight_bytes(m) + m.lm_head.weight.numel() * 4 for k, m in models.items()}
    big = torch.empty(2**26, device=dev)  # 256 MB: a copy reads and writes it once
    copy_s = min(timed(lambda: big.clone(), dev) for _ in range(5))
    rows += [(f'generation tokens/s, KV cache, fp32 ({gen_tokens} tokens, batch 1)', f"{rate['fp32', True]:,.0f}"),
             ('generation tokens/s, no cache, fp32', f"{rate['fp32', False]:,.0f}"),
             ('KV cache speed-up', f"{rate['fp32', True] / rate['fp32', False]:.1f}x")]
    for kind in ('int8', 'nf4'):
        rows.append((f'generation tokens/s, KV cache, {kind} weights', f"{rate[kind, True]:,.0f} "
                     f"({rate[kind, True] / rate['fp32', True]:.2f}x fp32)"))
    for kind in ('fp32', 'int8', 'nf4'):
        rows.append((f'weights read per cached token, {kind}', f"{read[kind] / 2**20:.2f} MiB: "
                     f"{read[kind] * rate[kind, True] / 1e9:.1f} GB/s"))
    rows.append(('this machine\'s copy bandwidth (256 MB clone, read + write)', f"{2 * big.numel() * 4 / copy_s / 1e9:.1f} GB/s"))
    print(f"\nbench: {model_args}, device {dev}, torch {torch.__version__}")
    print('| measure | value |\n|---|---|')
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == '__main__':
    # bench.py's own knobs first; everything else is a gpt.py knob, passed on to it
    own = [a for a in sys.argv[1:] if a.split('=')[0].lstrip('-') in knobs(globals())]
    rest = [a for a in sys.argv[1:] if a not in own]
    configure(globals(), own)
    configure(vars(gpt), rest)
    main(rest)
