"""
A character-level GPT in one file: data, model, training, checkpoints and sampling, top to bottom.

    python prepare.py                          # once: writes data/shakespeare_char/
    python gpt.py                              # trains a small GPT on a CPU in a few minutes
    python gpt.py config/lecture_gpu.py        # the lecture's 6-layer, 384-wide model, on a GPU
    python gpt.py --init_from=resume --max_iters=0 --prompt="ROMEO:"   # only sample from out/ckpt.pt
    torchrun --standalone --nproc_per_node=8 gpt.py config/lecture_gpu.py   # data parallel (DDP)
"""
import json
import math
import os
import pickle
import signal
import sys
import time
import warnings
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import configure, knobs

# -----------------------------------------------------------------------------
dataset = 'shakespeare_char'  # reads data/<dataset>/ (made by prepare.py)
out_dir = 'out'  # checkpoint at <out_dir>/ckpt.pt, CSV log at <out_dir>/log.csv; relative to this file
init_from = 'scratch'  # 'scratch' or 'resume' (from <out_dir>/ckpt.pt)
device = 'auto'  # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'  # 'auto': bfloat16 on GPUs that have it, else float16 on CUDA, else float32
compile = 'auto'  # torch.compile the model: 'auto' means on CUDA only; true/false force it
seed = 1337
# model
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64  # the longest context the model sees
dropout = 0.0
# newer parts, each one switch (config/classic.py turns them all off for the classic GPT)
rope = True  # rotary position embeddings instead of a learned position table
rmsnorm = True  # RMSNorm instead of LayerNorm
qk_norm = True  # normalize queries and keys before attention
relu2 = False  # ReLU squared instead of GELU in the MLP
tie_weights = True  # the output head shares the token embedding matrix
# training
optimizer = 'muon'  # 'muon': Muon for the blocks' matrices, AdamW for the rest; or 'adamw' for all
muon_lr = 0.02  # Muon's peak rate (scaled by the same schedule)
schedule = 'wsd'  # 'wsd': warmup, stable, then a linear decay; or 'cosine' decay after warmup
batch_size = 8  # sequences per micro-step, per process
gradient_accumulation_steps = 3  # micro-steps per optimizer step: a bigger batch, not more memory
max_iters = 2000  # optimizer steps
max_time = 0.0  # seconds of training; 0 means no limit. Whichever of the two ends first ends training
learning_rate = 2e-3  # peak rate, after warmup
min_lr = 2e-4  # the decay ends here
warmup_iters = 100
lr_decay_iters = 0  # steps of warmup plus decay; 0 means max_iters
weight_decay = 0.1  # on matrices only
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip the gradient norm to this; 0 disables
eval_interval = 250  # estimate the loss (and save) every this many steps
eval_iters = 20  # batches per loss estimate
log_interval = 50  # a progress line every this many steps
# sampling, after training
prompt = '\n'  # sampling starts from this text
num_samples = 1
max_new_tokens = 500
temperature = 0.8  # 0 means greedy
top_k = 0  # keep only the k most likely tokens; 0 keeps all
top_p = 1.0  # keep the fewest tokens whose probability adds up to top_p; 1.0 keeps all
kv_cache = True  # reuse keys and values of earlier positions while sampling
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))


def die(msg):
    sys.exit(f"error: {msg}")


def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        die(f"--device={name}, but CUDA is not available to torch {torch.__version__}; try --device=cpu")
    if name == 'mps' and not torch.backends.mps.is_available():
        die("--device=mps, but MPS is not available on this machine; try --device=cpu")
    if name.split(':')[0] not in ('cpu', 'cuda', 'mps'):
        die(f"unknown --device={name}; use auto, cpu, cuda, cuda:N or mps")
    return name


def load_data(dataset):
    """The train and val token arrays (memory-mapped) and the vocabulary."""
    folder = os.path.join(ROOT, 'data', dataset)
    try:
        with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
            chars = json.load(f)['chars']
        train = np.memmap(os.path.join(folder, 'train.bin'), dtype=np.uint16, mode='r')
        val = np.memmap(os.path.join(folder, 'val.bin'), dtype=np.uint16, mode='r')
    except (OSError, ValueError, KeyError) as e:
        die(f"dataset '{dataset}' is not prepared in {folder} ({type(e).__name__}); run: python prepare.py")
    return train, val, chars


def get_batch(data, ix, block_size, device):
    """Inputs data[i:i+block_size] for each start i in ix, and targets shifted by one."""
    rows = torch.from_numpy(data[ix.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device, ctx=nullcontext()):
    """Mean loss over the same eval_iters random batches of each split at every eval."""
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(0)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
            with ctx:
                losses[k] = model(*get_batch(data, ix, block_size, device))[1].item()
        out[name] = losses.mean().item()
    model.train()
    return out


@torch.no_grad()
def full_val_loss(model, data, block_size, device, batch_size=64, ctx=nullcontext()):
    """Loss over the whole split: consecutive windows, so every token but the first is predicted once."""
    model.eval()
    starts = torch.arange(0, len(data) - 1, block_size)
    total = 0.0
    for b in range(0, len(starts), batch_size):
        ix = starts[b:b + batch_size]
        full, last = ix[ix + block_size < len(data)], ix[ix + block_size >= len(data)]
        for part, t in ((full, block_size), (last, len(data) - 1 - int(last[0]) if len(last) else 0)):
            if len(part):
                with ctx:
                    loss = model(*get_batch(data, part, t, device))[1]
                total += loss.item() * len(part) * t
    model.train()
    return total / (len(data) - 1)


def get_lr(it, progress, learning_rate, min_lr, warmup_iters, schedule='cosine'):
    """Linear warmup for warmup_iters steps, then a decay to min_lr as progress goes from 0 to 1:
    'cosine' decays all the way; 'wsd' (warmup-stable-decay) holds the peak, then decays linearly
    over the last 40%."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)  # never 0, even at step 0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == 'wsd':
        coeff = min(1.0, (1.0 - progress) / 0.4)  # 1 until 60%, then linearly to 0
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


class KVCache:
    """Keys and values of the positions seen so far, for every layer: (n_layer, B, nh, block_size, hs)."""

    def __init__(self, n_layer, batch, n_head, block_size, head_size, device, dtype):
        self.k = torch.zeros(n_layer, batch, n_head, block_size, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0  # how many positions are filled; the model advances it after each forward

    def update(self, layer, k, v):
        """Store the new (B, nh, T, hs) keys and values at pos; return all keys and values so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def rotate(x, cos, sin):
    """Rotary position embedding: turn each pair (x1[i], x2[i]) of a head by its position's angle i."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each; cos and sin are (T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):

    def __init__(self, n_embd, n_head, dropout, qk_norm=False):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)  # query, key and value for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.qk_norm = qk_norm  # normalize each query and key: keeps attention logits in range at high lr
        self.use_sdpa = True  # False runs the explicit masked softmax below, the readable reference

    def forward(self, x, rope=None, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, L, hs): this chunk's keys after the cached ones
        L = k.size(2)
        dropout_p = self.dropout if self.training else 0.0
        if self.use_sdpa:  # fused kernels (flash attention on GPUs); is_causal masks top-left, so only for T == L
            mask = None if T == L else torch.ones(T, L, dtype=torch.bool, device=x.device).tril(L - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=T == L)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, L)
            causal = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(L - T)  # query t sees keys <= t
            att = F.softmax(att.masked_fill(~causal, float('-inf')), dim=-1)
            y = F.dropout(att, dropout_p, self.training) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, n_embd, dropout, relu2=False):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)
        self.act = (lambda h: F.relu(h).square()) if relu2 else F.gelu
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, n_embd, n_head, dropout, rmsnorm=False, qk_norm=False, relu2=False):
        super().__init__()
        Norm = nn.RMSNorm if rmsnorm else nn.LayerNorm
        self.ln_1 = Norm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, qk_norm)
        self.ln_2 = Norm(n_embd)
        self.mlp = MLP(n_embd, dropout, relu2)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The classic GPT by default; each switch swaps one part for a newer one (see the README's ablation)."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0,
                 rope=False, rmsnorm=False, qk_norm=False, relu2=False, tie_weights=True):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)  # token embeddings
        if rope:  # positions as rotations of queries and keys, not a table added to the input
            hs = n_embd // n_head
            angles = torch.outer(torch.arange(block_size), 10000.0 ** (-torch.arange(0, hs, 2) / hs))  # (T, hs/2)
            self.register_buffer('rope_cos', angles.cos(), persistent=False)
            self.register_buffer('rope_sin', angles.sin(), persistent=False)
        else:
            self.wpe = nn.Embedding(block_size, n_embd)  # learned position embeddings
        self.rope = rope
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, rmsnorm, qk_norm, relu2) for _ in range(n_layer))
        self.ln_f = nn.RMSNorm(n_embd) if rmsnorm else nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        # nanoGPT's init: N(0, 0.02), with the projections into the residual stream scaled down by depth
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith('c_proj.weight') else 0.02
                torch.nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.rope:
            rope = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer)
        x = self.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:  # sampling needs only the last position's logits
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab_size)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, kv_cache=True, generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T).

        The context is cropped to block_size. With the cache, each step feeds only the newest token.
        Learned positions end at block_size, so when the cache is full it is rebuilt from the last
        block_size // 2 tokens at positions 0.. (one forward over them), and filling goes on from there:
        every token still sees at least half a block of context, at a small amortized cost. While the
        text fits in block_size, cached and uncached sampling give the same tokens."""
        cache, fed = None, 0  # fed: how many tokens of idx are in the cache
        for _ in range(max_new_tokens):
            if not kv_cache:
                logits, _ = self(idx[:, -self.block_size:])
            else:
                if cache is None or cache.pos == self.block_size:
                    keep = idx.size(1) if cache is None and idx.size(1) <= self.block_size else self.block_size // 2
                    attn = self.blocks[0].attn
                    cache = KVCache(len(self.blocks), idx.size(0), attn.n_head, self.block_size,
                                    attn.c_proj.in_features // attn.n_head, idx.device, self.wte.weight.dtype)
                    fed = idx.size(1) - keep
                logits, _ = self(idx[:, fed:], cache=cache)
                fed = idx.size(1)
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)), dim=1)
        return idx


def newton_schulz(G, steps=5):
    """The nearest semi-orthogonal matrix to G, approximately: all singular values pushed towards 1."""
    a, b, c = 3.4445, -4.7750, 2.0315  # a quintic iteration tuned to converge fast (Keller Jordan's Muon)
    X = G / (G.norm() + 1e-7)  # singular values now <= 1
    if G.size(0) > G.size(1):
        X = X.T  # iterate on the wide side: X @ X.T is the smaller product
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.size(0) > G.size(1) else X


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalize the update: every direction of a weight matrix moves at the same rate."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group['momentum'])
                update = newton_schulz(p.grad.lerp(buf, group['momentum']))  # Nesterov momentum
                p.add_(update.to(p.dtype), alpha=-group['lr'] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def sample_next(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One token per row from (B, vocab) logits; temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = F.softmax(logits, dim=-1)
    if top_p < 1.0:  # nucleus: drop the tail once the more likely tokens already hold top_p
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        tail = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # the most likely token always stays
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(tail, 0.0))
    return torch.multinomial(probs, 1, generator=generator)


def save_checkpoint(path, ckpt):
    """Write to a temp file, fsync, then rename: a crash leaves the old checkpoint or the new one."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, model_type, chars, check_vocab=True):
    """A checkpoint as plain data (weights_only: no pickled code runs), checked against the dataset."""
    if not os.path.exists(path):
        die(f"no checkpoint at {path}; train first (init_from='scratch')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # torch warns about the pickle protocol of foreign files
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        die(f"{path} is not a loadable checkpoint: it is not plain tensors and data, or is damaged "
            "(weights_only refused it; nothing in it ran)")
    except Exception as e:
        die(f"{path} is not a loadable checkpoint: truncated or not a torch file ({type(e).__name__})")
    if not isinstance(ckpt, dict) or ckpt.get('model_type') != model_type:
        die(f"{path} is not a {model_type} checkpoint")
    if check_vocab and ckpt['chars'] != chars:
        die(f"{path} was trained on another vocabulary ({len(ckpt['chars'])} chars) "
            f"than dataset '{dataset}' ({len(chars)} chars)")
    return ckpt


def check_config(n_train, n_val):
    """One clear line for each setting that cannot work, before anything is built or written."""
    problems = [
        (init_from in ('scratch', 'resume'), f"init_from must be 'scratch' or 'resume', not '{init_from}'"),
        (min(n_layer, n_head, n_embd, block_size, batch_size, gradient_accumulation_steps, eval_interval,
             eval_iters, log_interval, num_samples) > 0,
         "n_layer, n_head, n_embd, block_size, batch_size, gradient_accumulation_steps, eval_interval, "
         "eval_iters, log_interval and num_samples must be positive"),
        (n_embd % n_head == 0, f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})"),
        (block_size < min(n_train, n_val), f"block_size ({block_size}) must be shorter than both splits "
                                           f"({n_train:,} and {n_val:,} tokens)"),
        (min(max_iters, max_time, max_new_tokens, warmup_iters, lr_decay_iters, grad_clip, weight_decay) >= 0,
         "max_iters, max_time, max_new_tokens, warmup_iters, lr_decay_iters, grad_clip and weight_decay "
         "must not be negative"),
        (0 <= dropout < 1, f"dropout must be in [0, 1), not {dropout}"),
        (0 < learning_rate and 0 <= min_lr <= learning_rate, "need 0 < learning_rate and 0 <= min_lr <= learning_rate"),
        (temperature >= 0, f"temperature must be >= 0 (0 is greedy), not {temperature}"),
        (top_k >= 0, f"top_k must be >= 0 (0 keeps all tokens), not {top_k}"),
        (0 < top_p <= 1, f"top_p must be in (0, 1], not {top_p}"),
        (prompt != '', "prompt must not be empty (the default is a newline)"),
        (dtype in ('auto', 'float32', 'bfloat16', 'float16'), f"dtype must be auto, float32, bfloat16 or float16"),
        (str(compile).lower() in ('auto', 'true', 'false'), f"compile must be auto, true or false, not '{compile}'"),
        (optimizer in ('adamw', 'muon'), f"optimizer must be 'adamw' or 'muon', not '{optimizer}'"),
        (schedule in ('cosine', 'wsd'), f"schedule must be 'cosine' or 'wsd', not '{schedule}'"),
        (not rope or (n_embd // n_head) % 2 == 0, f"rope needs an even head size, not {n_embd // max(n_head, 1)}"),
    ]
    for ok, msg in problems:
        if not ok:
            die(msg)


def main():
    # processes: one, or one per GPU (or CPU worker) under torchrun, each with a slice of every batch
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank, world_size, local_rank = (int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('WORLD_SIZE', 1), ('LOCAL_RANK', 0)))
    master = rank == 0
    dev = pick_device(device)
    if ddp and dev.startswith('cuda'):
        dev = f'cuda:{local_rank}'
        torch.cuda.set_device(dev)
    dev_type = dev.split(':')[0]
    train_data, val_data, chars = load_data(dataset)
    check_config(len(train_data), len(val_data))
    if ddp:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group(backend='nccl' if dev_type == 'cuda' else 'gloo')
    log = print if master else (lambda *a, **k: None)

    # precision: bf16 autocast where the GPU has it, fp16 with a gradient scaler on older GPUs, else fp32
    ptdtype = dtype
    if dtype == 'auto':
        ptdtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if dev_type == 'cuda' else 'float32'
    why = {'cuda': 'GPU autocast', 'cpu': 'float32 is fastest and exact on CPUs', 'mps': 'MPS default'}[dev_type]
    log(f"device: {dev}, dtype: {ptdtype} ({why if dtype == 'auto' else 'as asked'})")
    ctx = nullcontext() if ptdtype == 'float32' else torch.autocast(dev_type, dtype=getattr(torch, ptdtype))
    scaler = torch.amp.GradScaler(dev_type, enabled=ptdtype == 'float16')
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls for any float32 work left on the GPU
    torch.backends.cudnn.allow_tf32 = True

    stoi = {c: i for i, c in enumerate(chars)}
    config = knobs(globals())
    ckpt_path = os.path.join(ROOT, out_dir, 'ckpt.pt')
    torch.manual_seed(seed + rank)  # dropout differs between processes; the batches come from data_rng
    data_rng = torch.Generator().manual_seed(seed)  # the same on every process: it draws the global batch
    model_args = dict(vocab_size=len(chars), block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      dropout=dropout, rope=rope, rmsnorm=rmsnorm, qk_norm=qk_norm, relu2=relu2, tie_weights=tie_weights)
    iter_num, best_val_loss, ckpt = 0, math.inf, None
    if init_from == 'resume':
        ckpt = load_checkpoint(ckpt_path, 'gpt', chars)
        model_args = {**ckpt['model_args'], 'dropout': dropout}  # the architecture is the checkpoint's
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
    missing = sorted(set(prompt) - set(stoi))
    if missing:
        die(f"the prompt has characters that are not in the vocabulary: {missing}")
    raw_model = GPT(**model_args).to(dev)
    log(f"model: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters, {model_args}")

    params = dict(raw_model.named_parameters())
    hidden = [p for n, p in params.items() if p.dim() >= 2 and n.startswith('blocks.') and optimizer == 'muon']
    decay = [p for p in params.values() if p.dim() >= 2 and not any(p is h for h in hidden)]  # matrices only
    no_decay = [p for p in params.values() if p.dim() < 2]
    optimizers = [torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                                     {'params': no_decay, 'weight_decay': 0.0}],
                                    lr=learning_rate, betas=(beta1, beta2), fused=dev_type == 'cuda')]
    if hidden:
        optimizers.append(Muon(hidden, lr=muon_lr))
    if ckpt is not None:
        raw_model.load_state_dict(ckpt['model'])
        if len(ckpt['optimizer']) != len(optimizers):
            die(f"{ckpt_path} was trained with optimizer='{ckpt['config']['optimizer']}'; resume with the same")
        for opt, state in zip(optimizers, ckpt['optimizer']):
            opt.load_state_dict(state)
        data_rng.set_state(ckpt['rng']['data'])
        if rank < len(ckpt['rng']['torch']):  # after the model is built, whose init draws from the same generator
            torch.set_rng_state(ckpt['rng']['torch'][rank].clone())  # a row per process: its dropout stream
            if dev_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
                torch.cuda.set_rng_state(ckpt['rng']['cuda'][rank].clone())
        log(f"resumed from {ckpt_path} at step {iter_num}")
    elif master and os.path.exists(ckpt_path):
        print(f"note: this run will overwrite {ckpt_path} (resume it with --init_from=resume)")
    for opt, base_lr in zip(optimizers, (learning_rate, muon_lr)):
        for group in opt.param_groups:
            group['base_lr'] = base_lr  # the schedule scales every group by lr / learning_rate
    model = raw_model
    if str(compile).lower() == 'true' or (str(compile).lower() == 'auto' and dev_type == 'cuda'):
        try:  # compile now, on one batch, so that a failure shows here; the RNG is left as it was
            model = torch.compile(raw_model)
            with torch.random.fork_rng(devices=[dev] if dev_type == 'cuda' else []), ctx:
                model(*get_batch(train_data, torch.zeros(batch_size, dtype=torch.long), block_size, dev))
        except Exception as e:
            log(f"warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:100]}); running eagerly")
            model = raw_model
    train_model = DDP(model, device_ids=[local_rank] if dev_type == 'cuda' else None) if ddp else model

    def every_rank(state):
        """One process's RNG state, stacked with every other process's (rows in rank order)."""
        if not ddp:
            return state[None]
        rows = [torch.empty_like(state, device=dev) for _ in range(world_size)]
        dist.all_gather(rows, state.to(dev))  # NCCL gathers only GPU tensors
        return torch.stack(rows).cpu()

    def checkpoint():
        """Every process calls this: each one's RNG state goes in; process 0 writes the file."""
        if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
            die(f"the weights are not finite at step {iter_num}; not saved, {ckpt_path} keeps the last good state")
        rng = {'torch': every_rank(torch.get_rng_state()), 'data': data_rng.get_state(),
               'cuda': every_rank(torch.cuda.get_rng_state()) if dev_type == 'cuda' else None}
        if master:
            os.makedirs(os.path.dirname(ckpt_path), exist_ok=True)
            save_checkpoint(ckpt_path, {
                'model_type': 'gpt', 'model': raw_model.state_dict(), 'optimizer': [o.state_dict() for o in optimizers],
                'model_args': model_args, 'iter_num': iter_num, 'best_val_loss': best_val_loss,
                'config': config, 'chars': chars, 'rng': rng})

    # Ctrl-C or SIGTERM: finish the current step, save it, say how to resume, exit non-zero
    stop = {'signal': 0}
    def on_signal(signum, frame):
        stop['signal'] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)

    tokens_per_iter = batch_size * block_size * gradient_accumulation_steps * world_size
    if iter_num < max_iters:
        log(f"tokens per optimizer step: {tokens_per_iter:,} = batch_size {batch_size} x block_size {block_size}"
            f" x gradient_accumulation_steps {gradient_accumulation_steps} x processes {world_size}")
    n_params = sum(p.numel() for p in raw_model.parameters())
    flops_per_iter = (6 * n_params + 12 * n_layer * n_embd * block_size) * tokens_per_iter  # fwd + bwd
    peak = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # dense bf16 FLOP/s
    peak_flops = next((v for k, v in peak.items() if dev_type == 'cuda' and k in torch.cuda.get_device_name()), 0)
    decay_iters = lr_decay_iters or max_iters
    csv_path = os.path.join(ROOT, out_dir, 'log.csv')
    if master:
        os.makedirs(os.path.dirname(csv_path), exist_ok=True)
        if not os.path.exists(csv_path) or init_from == 'scratch':
            with open(csv_path, 'w') as f:
                f.write('kind,iter,tokens,time_s,lr,train_loss,val_loss\n')
    start_iter, t_start, train_time, lr = iter_num, time.time(), 0.0, get_lr(iter_num, 0, learning_rate, min_lr, warmup_iters)

    def write_csv(kind, train_loss, val_loss=''):
        if master:
            with open(csv_path, 'a') as f:
                f.write(f"{kind},{iter_num},{iter_num * tokens_per_iter},{train_time:.3f},{lr:.6g},{train_loss:.6f},{val_loss}\n")

    def agree(*values):
        """The largest of each value over all processes, so that they all decide the same."""
        if not ddp:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    t0 = time.time()
    while True:
        # stop on the step count, the time budget, or a signal to any process
        signum, train_time = agree(stop['signal'], time.time() - t_start)
        signum = int(signum)
        last_step = iter_num >= max_iters or (max_time > 0 and train_time >= max_time) or signum
        if (iter_num % eval_interval == 0 or last_step) and not (init_from == 'resume' and iter_num == start_iter) and not signum:
            losses = estimate_loss(model, {'train': train_data, 'val': val_data}, batch_size, block_size, eval_iters, dev, ctx)
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if not math.isfinite(losses['train'] + losses['val']):
                die(f"the loss is not finite at step {iter_num}; not saved, {ckpt_path} keeps the last good state")
            best_val_loss = min(best_val_loss, losses['val'])
            write_csv('eval', losses['train'], f"{losses['val']:.6f}")
            if iter_num > 0:
                checkpoint()
            t0 = time.time()  # the eval is not training time for the next progress line
        if signum:
            if iter_num > start_iter:
                checkpoint()
            log(f"{signal.Signals(signum).name} at step {iter_num}: "
                f"{'saved ' + ckpt_path if iter_num > start_iter else 'nothing new to save'}; "
                f"continue with the same command and --init_from=resume")
            if ddp:
                dist.barrier()
                dist.destroy_process_group()
            sys.exit(128 + signum)
        if last_step:
            break

        # how far the decay has gone: by steps after warmup, or by time used, whichever is further
        progress = max((iter_num - warmup_iters) / max(decay_iters - warmup_iters, 1),
                       train_time / max_time if max_time > 0 else 0.0)
        lr = get_lr(iter_num, progress, learning_rate, min_lr, warmup_iters, schedule)
        for opt in optimizers:
            for group in opt.param_groups:
                group['lr'] = group['base_lr'] * lr / learning_rate
        # the global batch: world_size x gradient_accumulation_steps micro-batches, drawn alike everywhere
        ix = torch.randint(len(train_data) - block_size, (world_size * gradient_accumulation_steps, batch_size),
                           generator=data_rng)
        for micro in range(gradient_accumulation_steps):
            if ddp:  # only the last micro-step averages the gradients across processes
                train_model.require_backward_grad_sync = micro == gradient_accumulation_steps - 1
            x, y = get_batch(train_data, ix[rank * gradient_accumulation_steps + micro], block_size, dev)
            with ctx:
                _, loss = train_model(x, y)
            scaler.scale(loss / gradient_accumulation_steps).backward()
        if agree(not math.isfinite(loss.item()))[0]:
            die(f"the loss is not finite at step {iter_num}; stopped, and {ckpt_path} keeps the last good "
                f"state. Try a lower learning_rate")
        if grad_clip > 0:
            for opt in optimizers:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        for opt in optimizers:
            scaler.step(opt)
            opt.zero_grad(set_to_none=True)
        scaler.update()
        iter_num += 1

        if iter_num % log_interval == 0 and master:
            dt = (time.time() - t0) / log_interval
            t0 = time.time()
            eta = (max_iters - iter_num) * dt
            if max_time > 0:
                eta = min(eta, max_time - (time.time() - t_start))
            mfu = f", mfu {100 * flops_per_iter / dt / peak_flops:.1f}%" if peak_flops else ''
            print(f"iter {iter_num}: loss {loss.item():.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, "
                  f"{tokens_per_iter / dt:,.0f} tok/s{mfu}, eta {eta:.0f}s")
            write_csv('train', loss.item())

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    if ddp:
        dist.barrier()  # leave together: no process exits while another still talks to it
        dist.destroy_process_group()
    if not master:
        return
    if iter_num > start_iter:
        print(f"trained {iter_num - start_iter} steps in {train_time:.1f}s; saved {ckpt_path}")
        if dev_type == 'cuda':
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")
        print(f"whole-split val loss {full_val_loss(raw_model, val_data, block_size, dev, batch_size, ctx):.4f} "
              f"({len(val_data) - 1:,} predictions)")
    raw_model.eval()
    g = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([[stoi[c] for c in prompt]] * num_samples, dtype=torch.long, device=dev)
    with ctx:
        out = raw_model.generate(idx, max_new_tokens, temperature, top_k, top_p, kv_cache, g)
    for row in out.tolist():
        print(''.join(chars[i] for i in row))
        print('---------------')


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C after training, while sampling
        sys.exit(130)
