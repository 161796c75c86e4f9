"""
The machine a run is on, for bigram.py, gpt.py and roads.py: the device (cuda, then mps, then cpu),
which CPU it is (the one reader of /proc/cpuinfo), the precision of a run, the processes of a
torchrun launch, and the signals that stop a run. None of it is a GPT's idea, so gpt.py calls it and reads on. It
never imports gpt.
"""
import gc
import os
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from checks import die


def pick_device(name):
    """'auto': cuda, then mps, then cpu; or the device asked for, if torch can use it."""
    there = {'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available(), 'cpu': True}
    kind = name.split(':')[0]
    if name == 'auto':
        return next(d for d, ok in there.items() if ok)
    if kind not in there:
        die(f"unknown --device={name}; use auto, cpu, cuda, cuda:N or mps")
    if not there[kind]:
        die(f"--device={name}, but {kind.upper()} is not available to torch {torch.__version__}; "
            f"try --device=cpu")
    return name


def read_cpuinfo(cpuinfo='/proc/cpuinfo'):
    """The text of /proc/cpuinfo, or '' where there is none: the one place the project reads it."""
    try:
        with open(cpuinfo, encoding='utf-8', errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def cpu_flags(cpuinfo='/proc/cpuinfo'):
    """This CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...); none where there is no /proc/cpuinfo."""
    return set(read_cpuinfo(cpuinfo).split())


def cpu_name(cpuinfo='/proc/cpuinfo'):
    """This CPU's model name, as lscpu gives it, and the flags that tell its class (roads.py times the
    roads themselves)."""
    name = 'a CPU'
    for line in read_cpuinfo(cpuinfo).splitlines():
        if line.startswith('model name'):
            name = line.split(':', 1)[1].strip()
            break
    flags = cpu_flags(cpuinfo)
    wanted = ('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'avx_vnni', 'amx_bf16')
    shown = [flag for flag in wanted if flag in flags]
    return f"{name} ({' '.join(shown) or 'no AVX2'})"


def flops_per_token(n_params, n_layer, n_embd, block_size):
    """Training FLOPs per token: 6 per parameter (forward and backward) plus attention's 12 per
    layer, width and position (PaLM's appendix, as nanoGPT counts them for its MFU)."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


# dense bf16 FLOP/s, for the MFU estimate
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def peak_flops(dev_type):
    """This GPU's dense bf16 FLOP/s if it is one PEAK_FLOPS knows, else 0."""
    if dev_type != 'cuda':
        return 0.0
    name = torch.cuda.get_device_name()
    return next((flops for gpu, flops in PEAK_FLOPS.items() if gpu in name), 0.0)


# ------------------------------------------------------------------- processes
@dataclass
class Processes:
    """One process, or one of torchrun's: which it is, and the device it computes on."""
    ddp: bool  # started by torchrun: every process trains a slice of the global batch
    rank: int  # this process's number; 0 writes the files and prints
    local_rank: int  # its number on this machine: which GPU is its
    world_size: int  # how many processes
    dev: str  # 'cpu', 'mps' or 'cuda:N'
    dev_type: str  # 'cpu', 'mps' or 'cuda'
    ctx: object = nullcontext()  # roads.set_precision(): autocast in the run's precision, or a nullcontext
    scaler: object = None  # roads.set_precision(): fp16's gradient scaler (off in other precisions)

    @property
    def master(self):
        return self.rank == 0

    def log(self, *args, **kwargs):
        """print, on process 0 alone."""
        if self.master:
            print(*args, **kwargs)


def start_processes(device):
    """This process: alone, or one of torchrun's (RANK and WORLD_SIZE are set), joined to the
    others by NCCL on GPUs or gloo on CPUs; each torchrun process on a GPU takes its own
    (LOCAL_RANK)."""
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    dev = pick_device(device)
    if ddp and dev.startswith('cuda'):
        dev = f'cuda:{local_rank}'
        torch.cuda.set_device(dev)
    dev_type = dev.split(':')[0]
    if ddp:
        backend = 'gloo'
        if dev_type == 'cuda':
            backend = 'nccl'
        dist.init_process_group(backend=backend)
    return Processes(ddp, rank, local_rank, world_size, dev, dev_type)


def gather(procs, t):
    """This process's tensor t, stacked with every other process's: (world_size, *t.shape), in rank order."""
    if not procs.ddp:
        return t[None]
    rows = [torch.empty_like(t, device=procs.dev) for _ in range(procs.world_size)]
    dist.all_gather(rows, t.to(procs.dev))  # NCCL gathers only GPU tensors
    return torch.stack(rows).cpu()


def largest(procs, *values):
    """The largest of each value over all processes: what every process then decides on alike."""
    return gather(procs, torch.tensor(values, dtype=torch.float64)).amax(dim=0).tolist()


def finish_processes(procs):
    """Leave together: no process exits while another still talks to it."""
    if procs.ddp:
        # free the DDP wrapper (its reducer sits in reference cycles) while its process group lives
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------- signals
@contextmanager
def caught_signals():
    """Inside the block, Ctrl-C (SIGINT) and SIGTERM are only noted in caught['signal'], for the
    training loop to finish its step, save and exit; afterwards they act as before (Ctrl-C raises
    KeyboardInterrupt)."""
    caught = {'signal': 0}
    before = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        before[signum] = signal.signal(signum, lambda number, frame: caught.update(signal=number))
    try:
        yield caught
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def compile_and_wrap(procs, model, compile, one_batch):
    """torch.compile where asked (compile: 'auto' means on CUDA), then DDP across processes: the
    model to evaluate, and the one to train. The compile runs now, on one_batch(), so that a
    failure shows here (and training goes on eagerly); the RNG is left as it was."""
    compiled = model
    wanted = str(compile).lower()
    if wanted == 'true' or (wanted == 'auto' and procs.dev_type == 'cuda'):
        devices = []
        if procs.dev_type == 'cuda':
            devices = [procs.dev]
        try:
            compiled = torch.compile(model)
            with torch.random.fork_rng(devices=devices), procs.ctx:
                compiled(*one_batch())
        except Exception as e:
            # a message may be empty, or many lines long
            first = next(iter(str(e).splitlines()), '')[:100]
            procs.log(f"warning: torch.compile failed ({type(e).__name__}: {first}); running eagerly")
            compiled = model
    if not procs.ddp:
        return compiled, compiled
    from torch.nn.parallel import DistributedDataParallel as DDP
    device_ids = None
    if procs.dev_type == 'cuda':
        device_ids = [procs.local_rank]
    return compiled, DDP(compiled, device_ids=device_ids)
