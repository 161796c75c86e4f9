"""
The roads whose speed depends on the machine, chosen in one place by timing them: the precision a
training step computes in (dtype='auto'), the precision of Muon's Newton-Schulz, and the matmul of
int8 weights. On a GPU the answers are known (bf16 autocast where the GPU has it). On a CPU a list
of flags can't tell: bf16 autocast ran faster than float32 on an AMD EPYC with AVX512-BF16 and
slower on an Intel Xeon with AMX (docs/profile.md). So each candidate is timed here, on the run's
own shapes, in alternating turns for about a second, and the medians are compared: float32, the
exact one, unless the other is faster by MARGIN.

The answers of a run that trains are kept in a small JSON file (CACHE) per CPU, torch version,
thread count and shape, so that every run of one config on one machine takes the same roads; a
checkpoint keeps its run's roads, and a resumed run takes them again. A timing is kept only when
its turns agree (KEPT_IF): a machine busy with another process gives turns 5-10x apart, and its
verdict is used once, never kept. MINIGPT_MEASURE_AGAIN=1 times again and replaces what was kept.
Evaluating and sampling a checkpoint time nothing: it runs in its own precision. The knobs dtype,
newton_schulz and int8_road choose a road by hand. One road is not timed, since it ran as fast or
faster on both of MKL's paths tried: sampling on a CPU stores each Linear's weight input-major
(input_major()). It never imports gpt.
"""
import json
import os
import statistics
import time
from contextlib import nullcontext

import torch

from checkpoint import fcntl, write_atomic
from checks import die
from machine import cpu_name, largest

CACHE = os.environ.get('MINIGPT_ROADS', os.path.join(os.path.expanduser('~'), '.cache', 'minigpt', 'roads.json'))
MARGIN = 1.1  # an approximate road (bf16) is taken only when its median is at least 10% faster
BUDGET_S = 1.0  # about this long timing one choice
TURNS = (3, 9)  # at least 3 alternating turns of each candidate, at most 9
# a timing is kept when each road's slowest turn is within 2x its fastest (idle turns of a training
# step spread 1.3x-1.5x on an Intel Xeon, 2026-12-07), and an approximate road won every turn
KEPT_IF = 2.0


def machine_key():
    """What the answers depend on besides the shapes: the CPU, torch and the threads."""
    return f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads"


def read_cache(say=False):
    """The cache file's answers, {} where there is none or it can't be read (say: a note that it is
    written anew, when remember() replaces it)."""
    if not os.path.lexists(CACHE):
        return {}
    try:
        with open(CACHE) as f:
            answers = json.load(f)
    except (OSError, ValueError) as e:
        answers = f"{type(e).__name__}"
    if isinstance(answers, dict):
        return answers
    if say:
        print(f"note: the kept roads, {CACHE}, could not be read ({answers}); it is written anew")
    return {}


def remember(key, answer):
    """Add an answer to the cache file, under a lock (runs that end at once lose none of each
    other's answers), written whole. A cache that can't be written is said, and the run goes on."""
    def note(problem):
        print(f"note: could not keep the measured roads in {CACHE} ({problem}); the next run measures again")
    try:
        os.makedirs(os.path.dirname(CACHE) or '.', exist_ok=True)
        with open(CACHE + '.lock', 'a') as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            answers = read_cache(say=True)
            answers[key] = answer
            text = json.dumps(answers, indent=1, sort_keys=True)
            write_atomic({CACHE: text.encode()}, fail=note)
    except OSError as e:
        note(e.strerror or e)


def samples(candidates, budget_s=BUDGET_S):
    """Time each of {name: fn} in alternating turns, after one call each to warm up: {name: [the
    seconds of each turn]}. Turns alternate, so a machine that slows down slows all alike."""
    warm = {}
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    turns = max(TURNS[0], min(TURNS[1], int(budget_s / max(sum(warm.values()), 1e-6))))
    times = {name: [] for name in candidates}
    for _ in range(turns):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def decide(key, candidates, prefer, write):
    """The kept answer for key, or the candidates timed: the preferred one (the exact one) unless
    another's median is MARGIN faster. A timing whose turns agree is kept where write is true.
    Returns (name, why)."""
    full_key = f"{machine_key()}; {key}"
    cached = read_cache().get(full_key)
    again = os.environ.get('MINIGPT_MEASURE_AGAIN', '') not in ('', '0')
    if not again and isinstance(cached, dict) and cached.get('road') in candidates:
        return cached['road'], f"measured here on {cached['date']}: {cached['timing']}"
    times = samples(candidates)
    median = {name: statistics.median(t) for name, t in times.items()}
    road = prefer
    for name, t in median.items():
        if t * MARGIN < median[prefer] and t < median[road]:
            road = name
    steady = all(max(t) <= KEPT_IF * min(t) for t in times.values())
    every_turn = all(a * MARGIN < b for a, b in zip(times[road], times[prefer])) or road == prefer
    timing = ', '.join(f"{name} {1000 * t:.1f} ms" for name, t in median.items())
    if write and not (steady and every_turn):
        return road, f"measured now, not kept: its turns disagreed ({timing}, medians)"
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
        from muon import for_muon
        shapes = [tuple(p.shape) for name, p in model.named_parameters() if for_muon(name, p)]
    if asked['newton_schulz'] != 'auto' and not muon_trains:  # a resumed LoRA run: AdamW alone
        die("newton_schulz is Muon's precision, and this run trains no Muon: leave --newton_schulz out")
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


def set_precision(run, ptdtype, why):
    """The precision of the run's forward passes (precision() chooses it): run.ctx runs them
    in it (autocast, or a nullcontext for float32), run.scaler scales fp16's gradients. Says which,
    and why."""
    run.log(f"device: {run.dev}, dtype: {ptdtype} ({why})")
    run.ctx = nullcontext()
    if ptdtype != 'float32':
        run.ctx = torch.autocast(run.dev_type, dtype=getattr(torch, ptdtype))
    run.scaler = torch.amp.GradScaler(run.dev_type, enabled=ptdtype == 'float16')
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for float32 work on GPUs
    torch.backends.cudnn.allow_tf32 = True


PRECISIONS = ('float32', 'bfloat16', 'float16')


def precision(dev_type, model, model_args, batch, asked='auto', saved=None, trains=True):
    """The precision of the forward passes: (name, why). dtype='auto' takes, on CUDA, bf16 autocast
    (fp16 where the GPU lacks bf16); on a CPU, float32 or bf16 autocast, whichever ran a training
    micro-step of this model on batch faster; on MPS float32. A resumed run takes its own; a run
    that only evaluates or samples takes its checkpoint's own (saved), or float32."""
    if asked != 'auto':
        return asked, 'as asked'
    if not trains:  # one checkpoint, one figure: the same whole-split loss however it is loaded
        return saved or 'float32', f"the checkpoint's own{'' if saved else ': it names none'}"
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
                _, loss = model(x, y)
            loss.backward()
        return run

    key = f"a training micro-step of a GPT {json.dumps(model_args, sort_keys=True)} on a batch {tuple(x.shape)}"
    with torch.random.fork_rng():  # dropout's draws: the run's own are left as they were
        road, why = decide(key, {'float32': step(torch.float32), 'bfloat16': step(torch.bfloat16)}, 'float32', True)
    for p in model.parameters():
        p.grad = None
    return road, why


def newton_schulz(dev_type, shapes, asked='auto', saved=None, write=False):
    """Muon's Newton-Schulz precision: (name, why). On a CPU, float32 or bf16, whichever ran
    Newton-Schulz on these matrices' shapes faster (bf16's update is within 3% of float32's); on
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


def int8(model, asked='auto', sample=None):
    """int8's road for each of the model's Int8Linears: 'kernel' (int8 matmul) or 'float' (the
    codes as floats), both x @ dequantize()^T. The kernel is a road only where it sums the road's
    pieces exactly (quant.int8_kernel_is_exact asks the kernel itself). 'auto' takes the faster
    of the exact roads, timed here on sample() (a short cached sample): the kernel unless the float
    road's median is MARGIN faster. Neither wins everywhere: at the lecture's size the kernel ran
    1.55x-1.80x float32 on an AVX512 AMD EPYC (2026-12-05), and 0.26x on an AVX2-only one, where
    the float road ran 164-183 tokens/s against the kernel's 40 (2026-12-07). Sampling keeps
    nothing, so this is timed in every run that quantizes to int8. Returns the line that says
    which, and why."""
    import quant
    layers = [m for m in model.modules() if isinstance(m, quant.Int8Linear)]
    if not layers:
        return ''
    exact = layers[0].qweight.device.type == 'cpu' and quant.int8_kernel_is_exact()
    road, why = asked, 'as asked'
    if asked == 'kernel' and not exact:
        road, why = 'float', 'the kernel was asked, but this CPU does not sum int8 exactly'
    elif asked == 'auto' and not exact:
        road, why = 'float', 'this CPU does not sum int8 exactly'
    elif asked == 'auto':
        def on(name):
            def run():
                for m in layers:
                    m.road = name
                sample()
            return run
        road, why = decide('int8', {'kernel': on('kernel'), 'float': on('float')}, 'kernel', False)
        why = why.replace('measured now', 'both exact here; timed now on a short sample')
    for m in layers:
        m.road = road
    return f"int8 on the {road} road ({why})"


def input_major(model):
    """Sampling on a CPU: each Linear's weight stored as its transpose made contiguous, viewed back.
    It is the same (out, in) matrix with the same numbers; only the order in memory changes, each
    column now in one piece. F.linear computes x @ W.T, and with W.T contiguous MKL's matmul of a
    few rows (--num_samples) ran faster on its AVX-512 and AVX2 paths alike, and as fast at 1 row and
    at a thousand (docs/results.md, Sampling many at once). Training keeps the usual layout, the one
    its gradients come in; a GPU's weights are left as they are."""
    for linear in model.modules():
        if isinstance(linear, torch.nn.Linear) and linear.weight.device.type == 'cpu':
            linear.weight.data = linear.weight.data.t().contiguous().t()
