"""
The roads whose speed depends on the machine, chosen in one place by timing them: the precision a
training step computes in (dtype='auto'), the precision of Muon's Newton-Schulz, and the matmul of
int8 weights. On a GPU the answers are known (bf16 autocast where the GPU has it). On a CPU a list
of flags can't tell: bf16 autocast ran faster than float32 on an AMD EPYC with AVX512-BF16 and
slower on an Intel Xeon with AMX (docs/profile.md). So each candidate is timed here, on the run's
own shapes, for about a second, and the fastest is taken: float32, the exact one, unless the
other is faster by MARGIN. int8's road is the one not timed (int8() says why).

The answers are kept in a small JSON file (CACHE) per CPU, torch version, thread count and shape,
so that every run of one config on one machine takes the same roads; a checkpoint keeps its run's
roads, and a resumed run takes them again. Only a run that trains writes the file: sampling and
evaluation read it, or measure and keep the answer to themselves. The knobs dtype, newton_schulz
and int8_road choose a road by hand. It never imports gpt.
"""
import json
import os
import time

import torch

from machine import cpu_name, largest, set_precision

CACHE = os.environ.get('MINIGPT_ROADS', os.path.join(os.path.expanduser('~'), '.cache', 'minigpt', 'roads.json'))
MARGIN = 1.1  # an approximate road (bf16) is taken only when it is at least 10% faster
BUDGET_S = 1.0  # about this long timing one choice; at least one timing of each candidate


def machine_key():
    """What the answers depend on besides the shapes: the CPU, torch and the threads."""
    return f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def read_cache():
    """The cache file's answers, {} where there is none or it can't be read (it is measured again)."""
    try:
        with open(CACHE) as f:
            answers = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(answers, dict):
        return {}
    return answers


def remember(key, answer):
    """Add an answer to the cache file: written whole, then renamed into place. A cache that can't
    be written is said, and the run goes on."""
    answers = read_cache()
    answers[key] = answer
    try:
        os.makedirs(os.path.dirname(CACHE), exist_ok=True)
        with open(CACHE + '.tmp', 'w') as f:
            json.dump(answers, f, indent=1, sort_keys=True)
        os.replace(CACHE + '.tmp', CACHE)
    except OSError as e:
        print(f"note: could not keep the measured roads in {CACHE} ({e.strerror or e}); the next run measures again")


def fastest(candidates, budget_s=BUDGET_S):
    """Time each of {name: fn} in turns, after one call each to warm up: the best time of each, in
    seconds. Turns alternate, so a machine that slows down slows all alike."""
    best = {}
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        fn()
        best[name] = time.perf_counter() - t0
    rounds = max(1, min(5, int(budget_s / max(sum(best.values()), 1e-6))))
    best = {name: float('inf') for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def decide(key, candidates, exact, write):
    """The cached answer for key, or the candidates timed: the exact one unless another is MARGIN
    faster. Returns (name, why)."""
    full_key = f"{machine_key()}; {key}"
    cached = read_cache().get(full_key)
    if isinstance(cached, dict) and cached.get('road') in candidates:
        return cached['road'], f"measured here on {cached['date']}: {cached['timing']}"
    times = fastest(candidates)
    road = exact
    for name, t in times.items():
        if t * MARGIN < times[exact] and t < times[road]:
            road = name
    timing = ', '.join(f"{name} {1000 * t:.1f} ms" for name, t in times.items())
    if write:
        remember(full_key, {'road': road, 'timing': timing, 'date': time.strftime('%Y-%m-%d')})
    return road, f"measured now: {timing}"


# ------------------------------------------------------------------ the roads
def choose(run, model, model_args, batch, asked, saved, trains, muon_trains):
    """The run's precisions, {'dtype': ..., 'newton_schulz': ...}: as asked (the knobs), as the
    run chose when it started (saved), or timed here on batch. Process 0 chooses and the others
    follow; sets run.ctx and run.scaler (machine.py) and says what was chosen, and why."""
    shapes = []  # Muon's matrices
    if muon_trains:
        shapes = [tuple(p.shape) for name, p in model.named_parameters() if p.dim() >= 2 and name.startswith('blocks.')]
    chosen = [0, 0]
    why = ns_why = "process 0's"
    if run.master:
        ptdtype, why = precision(run.dev_type, model, model_args, batch, asked['dtype'], saved.get('dtype'), trains)
        ns, ns_why = newton_schulz(run.dev_type, shapes, asked['newton_schulz'], saved.get('newton_schulz'), trains)
        chosen = [PRECISIONS.index(ptdtype), PRECISIONS.index(ns)]
    chosen = [int(i) for i in largest(run, *chosen)]  # process 0's, on every process
    roads = {'dtype': PRECISIONS[chosen[0]], 'newton_schulz': PRECISIONS[chosen[1]]}
    set_precision(run, roads['dtype'], why)
    if muon_trains:
        run.log(f"Newton-Schulz in {roads['newton_schulz']} ({ns_why})")
    return roads


PRECISIONS = ('float32', 'bfloat16', 'float16')


def precision(dev_type, model, model_args, batch, asked='auto', saved=None, trains=True):
    """The precision of the forward passes: (name, why). dtype='auto' takes, on CUDA, bf16 autocast
    (fp16 where the GPU lacks bf16); on a CPU, float32 or bf16 autocast, whichever ran this model
    faster: a training micro-step on batch (a forward pass where the run does not train); on MPS
    float32. A resumed run takes its own. Only a run that trains keeps what it timed."""
    if asked != 'auto':
        return asked, 'as asked'
    if saved:
        return saved, 'as this run chose when it started'
    if dev_type == 'cuda':
        if torch.cuda.is_bf16_supported():
            return 'bfloat16', 'GPU autocast'
        return 'float16', 'GPU autocast'
    if dev_type != 'cpu':
        return 'float32', 'MPS default'
    x, y = batch

    def step(dtype):
        def run():
            with torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32):
                with torch.set_grad_enabled(trains):
                    _, loss = model(x, y)
            if trains:
                loss.backward()
        return run

    what = 'a forward pass'
    if trains:
        what = 'a training micro-step'
    key = f"{what} of a GPT {json.dumps(model_args, sort_keys=True)} on a batch {tuple(x.shape)}"
    with torch.random.fork_rng():  # dropout's draws: the run's own are left as they were
        road, why = decide(key, {'float32': step(torch.float32), 'bfloat16': step(torch.bfloat16)},
                           'float32', trains)
    for p in model.parameters():
        p.grad = None
    return road, why


def newton_schulz(dev_type, shapes, asked='auto', saved=None, write=False):
    """Muon's Newton-Schulz precision: (name, why). On a CPU, float32 or bf16, whichever ran
    Newton-Schulz on these matrices' shapes faster (bf16 gives the update within 5%, tested); on
    GPUs float32 (as Muon here has always run there)."""
    if asked != 'auto':
        return asked, 'as asked'
    if saved:
        return saved, 'as this run chose when it started'
    if not shapes:
        return 'float32', 'no Muon in this run'
    if dev_type != 'cpu':
        return 'float32', 'float32 off the CPU'
    from muon import newton_schulz as orthogonalize
    g = torch.Generator().manual_seed(0)
    matrices = [torch.randn(shape, generator=g) for shape in sorted(set(shapes))]

    def all_of(dtype):
        def run():
            for m in matrices:
                orthogonalize(m.to(dtype))
        return run

    key = f"Newton-Schulz on {sorted(set(shapes))}"
    return decide(key, {'float32': all_of(torch.float32), 'bfloat16': all_of(torch.bfloat16)}, 'float32', write)


def int8(model, asked='auto'):
    """int8's road for each of the model's Int8Linears: 'kernel' (int8 matmul) or 'float' (the
    codes as floats), both x @ dequantize()^T. 'auto' takes the kernel wherever it sums the road's
    pieces exactly (quant.int8_kernel_is_exact asks the kernel itself: with VNNI or AMX, and with
    AVX2 alone), else the float road. This one is not timed: on a 2-core AMD EPYC (2026-12-05) the
    float road's pace moved 3x from one 500-token sample to the next (73 to 291 tokens/s at the
    lecture's size; a second of timing called it the faster), while the kernel's stayed within 15%
    of its own (1.55x to 1.80x float32's in 4 runs of bench.py). Returns the line that says which,
    and why."""
    import quant
    layers = [m for m in model.modules() if isinstance(m, quant.Int8Linear)]
    if not layers:
        return ''
    exact = layers[0].qweight.device.type == 'cpu' and quant.int8_kernel_is_exact()
    road, why = asked, 'as asked'
    if asked == 'kernel' and not exact:
        road, why = 'float', 'the kernel was asked, but this CPU does not sum int8 exactly'
    elif asked == 'auto' and exact:
        road, why = 'kernel', 'this CPU sums int8 exactly, and the kernel kept its pace where the float road did not'
    elif asked == 'auto':
        road, why = 'float', 'this CPU does not sum int8 exactly'
    for m in layers:
        m.road = road
    return f"int8 on the {road} road ({why})"
