"""
A GPT in one file, read from top to bottom: the data, the model, sampling, checkpoints, and the steps of a
run: optimizer, training, evaluation (main() lists them).

The model is the lecture's ("Let's build GPT"), each of its parts one switch. By default `python gpt.py`
trains it with modern parts, which did better at equal time on a CPU (docs/results.md, the ablation): RoPE,
RMSNorm, QK-norm, a tied head, the Muon optimizer and a warmup-stable-decay schedule. The lecture's own parts
and recipe are config/lecture/parts.py; config/lecture_cpu.py runs them at this file's default size.

    python prepare.py                                  # once: writes data/shakespeare_char/
    python gpt.py                                      # trains a small GPT on a CPU, then samples
    python gpt.py --init_from=resume --max_iters=0 --prompt="ROMEO:"   # only sample from out/ckpt.pt

The next steps are one knob each, and the README shows their commands: BPE tokens (prepare.py),
gradient_checkpointing, quantize (quant.py), lora_rank (lora.py), instruction pairs and torchrun.
"""
import gc
import inspect
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint as recompute

from checkpoint import claimed, die, full_weights, load_checkpoint, read_model, save_checkpoint
from checks import problems, prompt_problem, stop_problem, writes_out_dir
from configurator import configure, knobs
from tokenizer import description_in, from_description


# -----------------------------------------------------------------------------
dataset = 'shakespeare_char'  # reads data/<dataset>/ (made by prepare.py)
out_dir = 'out'  # <out_dir>/ckpt.pt: the latest step; best.pt: the lowest val loss; log.csv; relative to this file
init_from = 'scratch'  # 'scratch', 'resume' (<out_dir>/ckpt.pt), a ckpt.pt's path, gpt2 or a HF folder (gpt2.py)
eval_only = False  # with init_from 'resume' or a path: print the whole-split val loss and bpb, then exit
export = False  # with init_from=PATH, max_iters=0: write its model (LoRA merged) to a new out_dir; else write nothing
device = 'auto'  # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'  # 'auto': bf16 on GPUs that have it, else fp16 on CUDA; CPUs: see pick_dtype
compile = 'auto'  # torch.compile the model: 'auto' means on CUDA only; true/false force it
seed = 1337
# model
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64  # the longest context the model sees
dropout = 0.0
# modern parts, each one switch (config/classic.py turns them all off: nanoGPT's GPT-2 parts)
rope = True  # rotary position embeddings instead of a learned position table
rmsnorm = True  # RMSNorm instead of LayerNorm
qk_norm = True  # normalize queries and keys before attention
relu2 = False  # ReLU squared instead of GELU in the feed-forward network
gelu_tanh = False  # GELU by its tanh approximation, as GPT-2's weights were trained (init_from=gpt2 sets it)
tie_weights = True  # the output head shares the token embedding matrix
# the lecture's parts, each one switch (config/lecture/ builds its steps with them)
bias = False  # biases in the Linears and the head, as in the lecture (nanoGPT's knob)
relu = False  # ReLU instead of GELU in the feed-forward network, as in the lecture
ffn = True  # a feed-forward network in each block
residual = True  # residual connections, x + f(x); False: x = f(x)
norm = True  # the norms before attention, before the feed-forward network and before the head
pos = True  # position information (the learned table, or rope); False: none
causal = True  # the mask that hides later positions; False lets each one see the future (docs/experiments.md)
weight_init = 'nanogpt'  # 'nanogpt': N(0, 0.02), projections scaled down by depth; 'pytorch': each layer's own
# training
optimizer = 'muon'  # 'muon': Muon for the blocks' matrices, AdamW for the rest; or 'adamw' for all
muon_lr = 0.02  # Muon's peak rate (scaled by the same schedule)
schedule = 'wsd'  # 'wsd': warmup, stable, then a linear decay; or 'cosine' decay after warmup
batch_size = 8  # sequences per micro-step, per process
gradient_accumulation_steps = 3  # micro-steps per optimizer step: a bigger batch, not more memory
max_iters = 2000  # optimizer steps; 0 with a loaded model: only sample (or evaluate, or export)
max_time = 0.0  # seconds of training; 0 means no limit. Whichever of the two ends first ends training
learning_rate = 2e-3  # peak rate, after warmup
min_lr = 2e-4  # the decay ends here
decay_lr = True  # False: after warmup the rate stays at learning_rate (the lecture's constant rate)
warmup_iters = 100
lr_decay_iters = 0  # steps of warmup plus decay; 0 means max_iters
weight_decay = 0.1  # AdamW's, on the matrices it trains (under Muon: embeddings, head; Muon's get none)
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip the gradient norm to this; 0 disables
eval_interval = 250  # estimate the loss (and save) every this many steps
eval_iters = 20  # batches per loss estimate
log_interval = 50  # a progress line every this many steps
# memory and fine-tuning
gradient_checkpointing = False  # recompute each block's activations in backward: less memory, more time
quantize = ''  # '', 'int8' or 'nf4': the blocks' Linear weights to evaluate and sample (and a LoRA run's frozen base)
lora_rank = 0  # > 0 (with init_from=PATH): train only a low-rank update B @ A of each Linear in the blocks
lora_alpha = 16.0  # the low-rank update is scaled by lora_alpha / lora_rank
# sampling, after training
prompt = '\n'  # sampling starts from this text
num_samples = 1
max_new_tokens = 500
temperature = 0.8  # 0 means greedy
top_k = 0  # keep only the k most likely tokens; 0 keeps all
top_p = 1.0  # keep the fewest tokens whose probability adds up to top_p; 1.0 keeps all
kv_cache = True  # reuse keys and values of earlier positions while sampling
stop = ''  # end a sample at this text; '' means none, or the end marker of a dataset of instruction pairs
interactive = False  # prompts from standard input, one a line, answered by one loaded model; '' or Ctrl-D ends
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGURED = {}  # the knobs that a config file or the command line set (configurator.py fills it)


def pick_device(name):
    there = {'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available(), 'cpu': True}
    if name == 'auto':
        return next(d for d, ok in there.items() if ok)  # cuda, then mps, then cpu
    if name.split(':')[0] not in there:
        die(f"unknown --device={name}; use auto, cpu, cuda, cuda:N or mps")
    if not there[name.split(':')[0]]:
        die(f"--device={name}, but {name.split(':')[0].upper()} is not available to torch {torch.__version__}; "
            f"try --device=cpu")
    return name


def pick_dtype(dev_type, cpuinfo='/proc/cpuinfo'):
    """dtype='auto', and why: autocast on CUDA; on a CPU, bf16 only where it measured faster (docs/profile.md)."""
    if dev_type != 'cpu':
        return ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16', 'GPU autocast') if dev_type == 'cuda' \
            else ('float32', 'MPS default')
    flags = open(cpuinfo, errors='replace').read().split() if os.access(cpuinfo, os.R_OK) else []
    if 'avx512_bf16' in flags and 'amx_bf16' not in flags:
        return 'bfloat16', 'autocast: measured faster than float32 on CPUs with AVX512-BF16; --dtype=float32 for exact'
    return 'float32', 'bf16 autocast measured slower on CPUs with AMX' if 'amx_bf16' in flags else 'no bf16 hardware'


# ------------------------------------------------------------------------ data
class Split:
    """One split's token ids, memory-mapped. A dataset of instruction pairs has a PairSplit instead
    (instruct.py): the same, plus a loss mask, so that only the responses are learned and scored."""
    mask = None

    def __init__(self, ids):
        self.ids = ids

    def random_starts(self, shape, block_size, generator):
        """Where training and eval windows start: anywhere in the text."""
        return torch.randint(len(self.ids) - block_size, shape, generator=generator)

    def eval_windows(self, block_size):
        """The whole-split loss's windows: where each starts, and its last target's position. Consecutive
        windows, so every token but the first is predicted once."""
        starts = np.arange(0, len(self.ids) - 1, block_size)
        return starts, np.minimum(starts + block_size, len(self.ids) - 1)


def load_data(dataset):
    """The train and val splits, the tokenizer, and meta.json (made by prepare.py)."""
    folder = os.path.join(ROOT, 'data', dataset)
    try:
        with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
        splits = {}
        for name in ('train', 'val'):
            ids = np.memmap(os.path.join(folder, f'{name}.bin'), dtype=np.uint16, mode='r')
            if meta.get('format', 'text') == 'text':
                splits[name] = Split(ids)
            else:  # instruction pairs: their loss mask comes along
                from instruct import PairSplit
                mask = np.memmap(os.path.join(folder, f'{name}_mask.bin'), dtype=np.uint8, mode='r')
                splits[name] = PairSplit(ids, mask)
    except (OSError, ValueError) as e:
        from prepare import command_for
        die(f"dataset '{dataset}' is not prepared in {folder} ({type(e).__name__}); run: {command_for(dataset)}")
    try:
        tok = from_description(description_in(meta))
    except ValueError as e:
        die(f"{folder}/meta.json has a malformed tokenizer ({e}); rerun prepare.py for this dataset")
    for name, split in splits.items():  # files from another preparation than meta.json's
        top = int(np.max(split.ids, initial=0))
        if top >= tok.vocab_size or (split.mask is not None and len(split.mask) != len(split.ids)):
            die(f"{folder}/{name}.bin does not match its meta.json (ids up to {top} for {tok.vocab_size} tokens, "
                f"or a mask of another length); rerun prepare.py for this dataset")
    val = splits['val']  # bytes per scored token (on pairs: a response's), to show losses as bits per byte
    bytes_per_token = np.array(tok.token_bytes)[val.ids if val.mask is None else val.ids[val.mask == 1]].mean()
    return SimpleNamespace(train=splits['train'], val=val, tok=tok, meta=meta, bytes_per_token=bytes_per_token)


def get_batch(split, ix, block_size, device):
    """Inputs ids[i:i+block_size] for each start i in ix, and targets shifted by one. Targets that the
    loss mask leaves out (a prompt's tokens) become -1, which cross_entropy ignores."""
    pos = ix.numpy()[:, None] + np.arange(block_size + 1)
    rows = torch.from_numpy(split.ids[pos].astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
    if split.mask is not None:
        y = y.masked_fill(torch.from_numpy(split.mask[pos[:, 1:]] == 0), -1)
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ------------------------------------------------------------------- the model
def rotate(x, cos, sin):
    """Rotary position embedding: turn each pair (x1[i], x2[i]) of a head by its position's angle i."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each; cos and sin are (T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# The lecture's names, and nanoGPT's for the same modules: MultiHeadAttention is nanoGPT's
# CausalSelfAttention, FeedForward is its MLP; Block and GPT are the same in both.
class MultiHeadAttention(nn.Module):
    """n_head heads of masked self-attention, computed as one matmul.

    The lecture's Head(head_size) has its own key, query and value Linears. Here one Linear, c_attn,
    makes all of them: its output is [q | k | v], and head h owns the columns h*hs:(h+1)*hs of each
    (hs = n_embd // n_head). view(B, T, nh, hs).transpose(1, 2) cuts those slices apart into a head
    dimension; the transpose back and view(B, T, C) is the lecture's torch.cat of the heads' outputs,
    which c_proj (the lecture's proj) then mixes."""

    def __init__(self, n_embd, n_head, dropout, qk_norm=False, bias=False, causal=True):
        super().__init__()
        self.n_head, self.causal = n_head, causal
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # query, key and value for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.qk_norm = qk_norm  # normalize each query and key: keeps attention logits in range at high lr
        self.use_sdpa = True  # False runs attention(), the lecture's explicit masked softmax

    def attention(self, q, k, v):
        """The lecture's attention, written out: scores, the causal mask, softmax, dropout, a weighted sum of
        values. q is (B, nh, T, hs); k and v are (B, nh, L, hs), L >= T: with the KV cache, keys of earlier
        positions come first, and query t sits at position L - T + t."""
        T, L = q.size(2), k.size(2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, L): how much each query likes each key
        seen = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)  # query t sees keys up to its own
        seen = seen if self.causal else torch.ones_like(seen)  # the experiment causal=False: it sees all of them
        att = F.softmax(att.masked_fill(~seen, float('-inf')), dim=-1)
        self.att = att.detach()  # what each query looks at: plot.py --attention draws it
        return F.dropout(att, self.dropout, self.training) @ v  # (B, nh, T, hs)

    def forward(self, x, rope=None, cache=None, layer=0):
        """rope: the (cos, sin) of these positions, or None; cache: a KVCache while sampling (defined with the
        sampling code below), else None; layer: which of the cache's layers is this block's."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if self.qk_norm:  # modern parts, beyond the lecture: normalize queries and keys, and turn them by position
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:  # sampling: this chunk's keys and values after the cached ones, (B, nh, L, hs)
            k, v = cache.update(layer, k, v)
        y = self.fused_attention(q, k, v) if self.use_sdpa and self.causal else self.attention(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: the lecture's torch.cat
        return self.resid_dropout(self.c_proj(y))

    def fused_attention(self, q, k, v):
        """The same numbers as attention() from PyTorch's fused kernel (flash attention on GPUs), which never
        stores the (T, L) matrix. Its is_causal masks top-left, so it serves T == L; one new query (cached
        sampling) sees every key and needs no mask; other shapes pass the mask."""
        T, L = q.size(2), k.size(2)
        mask = None if T == L or T == 1 else torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)
        with torch.autocast('cpu', enabled=False):  # on a CPU in fp32: its fused bf16 backward is ~5x slower
            q, k, v = (t.float() for t in (q, k, v)) if q.device.type == 'cpu' else (q, k, v)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training
                                                  else 0.0, is_causal=T == L)


class FeedForward(nn.Module):
    """Per position: Linear to 4x wider, a non-linearity, Linear back."""

    def __init__(self, n_embd, dropout, relu2=False, relu=False, bias=False, gelu_tanh=False):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        gelu = (lambda h: F.gelu(h, approximate='tanh')) if gelu_tanh else F.gelu
        self.act = (lambda h: F.relu(h).square()) if relu2 else F.relu if relu else gelu
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x)). The lecture's
    earlier steps leave out the feed-forward network, the residual connections or the norms."""

    def __init__(self, n_embd, n_head, dropout, rmsnorm=False, qk_norm=False, relu2=False, relu=False, bias=False,
                 ffn=True, residual=True, norm=True, causal=True, gelu_tanh=False):
        super().__init__()
        Norm = (nn.RMSNorm if rmsnorm else nn.LayerNorm) if norm else (lambda n: nn.Identity())
        self.ln_1 = Norm(n_embd)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout, qk_norm, bias, causal)
        if ffn:
            self.ln_2 = Norm(n_embd)
            self.mlp = FeedForward(n_embd, dropout, relu2, relu, bias, gelu_tanh)
        self.ffn, self.residual = ffn, residual

    def forward(self, x, rope=None, cache=None, layer=0):
        y = self.attn(self.ln_1(x), rope, cache, layer)
        x = x + y if self.residual else y
        if self.ffn:
            y = self.mlp(self.ln_2(x))
            x = x + y if self.residual else y
        return x


class GPT(nn.Module):
    """nanoGPT's GPT-2 by its arguments' defaults; a modern switch swaps in a newer part, a lecture's switch its own."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout=0.0, rope=False, rmsnorm=False,
                 qk_norm=False, relu2=False, tie_weights=True, bias=False, relu=False, ffn=True, residual=True,
                 norm=True, pos=True, weight_init='nanogpt', causal=True, gelu_tanh=False):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)  # token embeddings
        if rope and pos:  # positions as rotations of queries and keys, not a table added to the input
            hs = n_embd // n_head
            angles = torch.outer(torch.arange(block_size), 10000.0 ** (-torch.arange(0, hs, 2) / hs))  # (T, hs/2)
            self.register_buffer('rope_cos', angles.cos(), persistent=False)
            self.register_buffer('rope_sin', angles.sin(), persistent=False)
        elif pos:
            self.wpe = nn.Embedding(block_size, n_embd)  # learned position embeddings
        self.rope, self.pos, self.causal = rope and pos, pos, causal
        self.drop = nn.Dropout(dropout)
        parts = dict(rmsnorm=rmsnorm, qk_norm=qk_norm, relu2=relu2, relu=relu, bias=bias, ffn=ffn, residual=residual,
                     norm=norm, causal=causal, gelu_tanh=gelu_tanh)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, **parts) for _ in range(n_layer))
        self.ln_f = (nn.RMSNorm(n_embd) if rmsnorm else nn.LayerNorm(n_embd)) if norm else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=bias and not tie_weights)  # a tied head has none (GPT-2)
        if tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        self.gradient_checkpointing = False  # a way to run, not part of the architecture: set after building
        # nanoGPT's init (the lecture keeps PyTorch's: N(0, 1) embeddings, Linears uniform in +-1/sqrt(fan_in))
        for name, p in self.named_parameters() if weight_init == 'nanogpt' else []:
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith('c_proj.weight') else 0.02
                torch.nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith('bias'):
                torch.nn.init.zeros_(p)

    def forward(self, idx, targets=None, cache=None):
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        x = self.wte(idx)  # (B, T, C)
        rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T]) if self.rope else None
        if self.pos and not self.rope:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; backward runs the block again (with the same dropout
                # masks: the RNG state is saved and restored) to get the activations it needs
                x = recompute(block, x, rope, cache, layer, use_reentrant=False)
            else:
                x = block(x, rope, cache, layer)
        x = self.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:  # sampling needs only the last position's logits
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab_size)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        # targets of -1 (a prompt's tokens, under a loss mask) count for nothing
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, kv_cache=True, generator=None,
                 done=None):
        """Append up to max_new_tokens sampled tokens to idx (B, T); stop early once done(new_ids) is true
        for every row (new_ids: a row's sampled ids so far). The context is cropped to block_size.

        With the cache, each step feeds only the newest token. Positions end at block_size, so a full cache
        is rebuilt from the last half block (one forward over it, at positions 0..): every token still sees
        half a block or more. While the text fits in block_size, cached and uncached give the same tokens.
        A model without the causal mask never uses the cache: its cached positions never saw the later tokens."""
        kv_cache = kv_cache and self.causal
        cache, fed, T0 = None, 0, idx.size(1)  # fed: how many tokens of idx are in the cache
        for _ in range(max_new_tokens):
            if not kv_cache:
                logits, _ = self(idx[:, -self.block_size:])
            else:
                if cache is None or cache.pos == self.block_size:
                    fits = cache is None and idx.size(1) <= self.block_size
                    keep = idx.size(1) if fits else max(self.block_size // 2, 1)
                    attn = self.blocks[0].attn
                    cache = KVCache(len(self.blocks), idx.size(0), attn.n_head, self.block_size,
                                    self.wte.weight.size(1) // attn.n_head, idx.device, self.wte.weight.dtype)
                    fed = idx.size(1) - keep
                logits, _ = self(idx[:, fed:], cache=cache)
                fed = idx.size(1)
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)), dim=1)
            if done is not None and all(done(row[T0:]) for row in idx.tolist()):
                break
        return idx


# -------------------------------------------------------------------- sampling
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


def sample_next(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One token per row from (B, vocab) logits; temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = (logits.float() - logits.float().amax(dim=-1, keepdim=True)) / temperature  # <= 0: a tiny t can't overflow
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = F.softmax(logits, dim=-1)
    if top_p < 1.0:  # nucleus: drop the tail once the more likely tokens already hold top_p
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        tail = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # the most likely token always stays
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(tail, 0.0))
    return torch.multinomial(probs, 1, generator=generator)


# ---------------------------------------------------------- the steps of a run
def setup_processes():
    """One process, or one per GPU (or CPU worker) under torchrun; the device and the precision: `run`."""
    ddp = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    dev = pick_device(device)
    if ddp and dev.startswith('cuda'):
        dev = f'cuda:{local_rank}'
        torch.cuda.set_device(dev)
    dev_type = dev.split(':')[0]
    if ddp:
        dist.init_process_group(backend='nccl' if dev_type == 'cuda' else 'gloo')
    run = SimpleNamespace(ddp=ddp, rank=rank, world_size=world_size, local_rank=local_rank, master=rank == 0,
                          dev=dev, dev_type=dev_type, log=print if rank == 0 else (lambda *a, **k: None))
    ptdtype, why = pick_dtype(dev_type) if dtype == 'auto' else (dtype, 'as asked')
    run.log(f"device: {dev}, dtype: {ptdtype} ({why})")
    run.ctx = nullcontext() if ptdtype == 'float32' else torch.autocast(dev_type, dtype=getattr(torch, ptdtype))
    run.scaler = torch.amp.GradScaler(dev_type, enabled=ptdtype == 'float16')
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TF32 for float32 work on GPUs
    return run


def build_model(run, data):
    """The model: fresh ('scratch'), the run in out_dir ('resume'), or another checkpoint's weights to fine-tune
    (init_from=PATH, from step 0; with LoRA if lora_rank > 0). Also the state that the later steps share."""
    state = SimpleNamespace(iter_num=0, best_val_loss=math.inf, best_iter=0, train_time=0.0, lr=0.0, tokens_per_iter=0,
                            flops_per_iter=0, ckpt=None, lora=None, base=None, tokenizer=data.tok.describe(),
                            kept='no checkpoint was written',  # what a fault leaves in place, said when it stops
                            ckpt_path=os.path.join(ROOT, out_dir, 'ckpt.pt'), config=knobs(globals()),
                            data_rng=torch.Generator().manual_seed(seed),  # the same on every process: the global batch
                            template={k: data.meta[k] for k in ('sep', 'end') if k in data.meta},
                            model_args={'vocab_size': data.tok.vocab_size})
    state.model_args |= {k: globals()[k] for k in inspect.signature(GPT).parameters if k != 'vocab_size'}  # knobs
    torch.manual_seed(seed + run.rank)  # dropout differs between processes; the batches come from data_rng
    weights = None
    if init_from == 'resume':
        ckpt = state.ckpt = load_checkpoint(state.ckpt_path, 'gpt', data.tok, dataset)
        state.iter_num, state.best_iter = ckpt['iter_num'], ckpt.get('best_iter', 0)
        state.best_val_loss = ckpt['best_val_loss'] if 'best_iter' in ckpt else math.inf  # inf: no best.pt yet
        if max_iters and not eval_only and state.iter_num >= max_iters:
            run.log(f"note: {state.ckpt_path} is at step {state.iter_num}, at or past max_iters={max_iters}: nothing "
                    f"to train (a higher --max_iters trains on); its best model is evaluated again")
        state.kept = f"{state.ckpt_path} keeps step {state.iter_num}"
        state.train_time = ckpt.get('train_time', 0.0)  # seconds trained so far: max_time is for the whole run
        state.lora, state.base = ckpt.get('lora'), ckpt.get('base')
        if lora_rank and not state.lora:
            die(f"{state.ckpt_path} is not a LoRA run, so it cannot resume with lora_rank > 0; to add LoRA, "
                f"fine-tune it: --init_from={os.path.join(out_dir, 'ckpt.pt')} --out_dir=ANOTHER")
        weights = full_weights(state.ckpt_path, ckpt, data.tok, dataset, GPT, merge=False)  # a LoRA run: its base
    elif init_from != 'scratch':
        ckpt, path = read_model(init_from, ROOT, data.tok, dataset, block_size if 'block_size' in CONFIGURED else None)
        weights = full_weights(path, ckpt, data.tok, dataset, GPT)
        if lora_rank:  # a new LoRA run: the adapters' settings, and its own link to the file of their base
            from lora import keep_base
            state.lora = {'rank': lora_rank, 'alpha': lora_alpha, 'quantize': quantize}
            state.base = keep_base(path, os.path.join(ROOT, out_dir), write=run.master)
    if weights is not None:  # the architecture is the checkpoint's (and a LoRA run's settings, on resume)
        state.model_args = {**ckpt['model_args'], 'dropout': dropout}
        state.template = state.template or ckpt.get('template', {})
        keep_settings(state, {k: v for k, v in state.model_args.items() if k in state.config and k != 'dropout'})
        if state.lora and init_from == 'resume':  # a QLoRA model samples on its own 4-bit base, never another
            keep_settings(state, {'lora_rank': state.lora['rank'], 'lora_alpha': state.lora['alpha'],
                                  **({'quantize': state.lora['quantize']} if state.lora['quantize'] else {})})
    T, n_train, n_val = state.model_args['block_size'], len(data.train.ids), len(data.val.ids)
    if T >= min(n_train, n_val):  # the knob's, or a checkpoint's
        die(f"the model's block_size ({T}) must be shorter than both splits ({n_train:,} and {n_val:,} tokens)")
    problem = prompt_problem(data.tok, prompt + state.template.get('sep', ''), T)
    if problem and not interactive:
        die(problem)
    if stop_problem(data.tok, stop):
        die(stop_problem(data.tok, stop))
    model = GPT(**state.model_args)
    run.log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {state.model_args}")
    if weights is not None:
        model.load_state_dict(weights)
    if state.lora:  # lora.py loads only here, when a run has LoRA
        from lora import adapt, summary
        adapt(model, state.lora, state.ckpt['model'] if state.ckpt is not None else None)
        run.log(summary(model, state.lora))
    model.gradient_checkpointing = gradient_checkpointing
    return model.to(run.dev), state


def keep_settings(state, theirs):
    """A model from a checkpoint keeps its architecture, and a resumed LoRA run its rank, alpha and base: a knob
    set to another value is refused, never ignored. The saved config says what was used."""
    for k, v in theirs.items():
        if k in CONFIGURED and globals()[k] != v:
            die(f"--{k}={globals()[k]!r}, but the model of {init_from} has {k}={v!r}; it comes with the checkpoint: "
                f"leave --{k} out")
    state.config |= theirs


def make_optimizers(run, model, state):
    """AdamW, with weight decay on the matrices it trains, plus Muon (no weight decay) for the blocks' matrices;
    only AdamW on a LoRA update. On resume, their state, the step's RNG streams and the data order come back."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if state.lora:
        optimizers = [torch.optim.AdamW(params.values(), lr=learning_rate, betas=(beta1, beta2), weight_decay=0.0,
                                        fused=run.dev_type == 'cuda')]
    else:
        hidden = [p for n, p in params.items() if p.dim() >= 2 and n.startswith('blocks.') and optimizer == 'muon']
        decay = [p for p in params.values() if p.dim() >= 2 and not any(p is h for h in hidden)]  # matrices only
        no_decay = [p for p in params.values() if p.dim() < 2]
        optimizers = [torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                                         {'params': no_decay, 'weight_decay': 0.0}],
                                        lr=learning_rate, betas=(beta1, beta2), fused=run.dev_type == 'cuda')]
        if hidden:
            from muon import Muon
            optimizers.append(Muon(hidden, lr=muon_lr))
    ckpt = state.ckpt
    if ckpt is not None:
        if not ckpt['optimizer']:
            die(f"{state.ckpt_path} holds a model without an optimizer (written by --export): "
                f"fine-tune it with --init_from={os.path.join(out_dir, 'ckpt.pt')} --out_dir=ANOTHER")
        if len(ckpt['optimizer']) != len(optimizers):
            die(f"{state.ckpt_path} was trained with optimizer='{ckpt['config']['optimizer']}'; resume with the same")
        for opt, saved in zip(optimizers, ckpt['optimizer']):
            opt.load_state_dict(saved)
        state.data_rng.set_state(ckpt['rng']['data'])
        if run.rank < len(ckpt['rng']['torch']):  # after the model is built, whose init draws from the same generator
            torch.set_rng_state(ckpt['rng']['torch'][run.rank].clone())  # a row per process: its dropout stream
            if run.dev_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
                torch.cuda.set_rng_state(ckpt['rng']['cuda'][run.rank].clone())
        run.log(f"resumed from {state.ckpt_path} at step {state.iter_num}")
    elif run.master and os.path.exists(state.ckpt_path):
        print(f"note: this run will overwrite {state.ckpt_path} (resume it with --init_from=resume)")
    for opt, base_lr in zip(optimizers, (learning_rate, muon_lr)):
        for group in opt.param_groups:
            group['base_lr'] = base_lr  # the schedule scales every group by lr / learning_rate
    return optimizers


def every_rank(run, t):
    """This process's tensor t, stacked with every other process's (rows in rank order)."""
    if not run.ddp:
        return t[None]
    rows = [torch.empty_like(t, device=run.dev) for _ in range(run.world_size)]
    dist.all_gather(rows, t.to(run.dev))  # NCCL gathers only GPU tensors
    return torch.stack(rows).cpu()


def agree(run, *values):
    """The largest of each value over all processes, so that they all decide the same."""
    return every_rank(run, torch.tensor(values, dtype=torch.float64)).amax(dim=0).tolist()


def finish_processes(run):
    if run.ddp:
        gc.collect()  # free the DDP wrapper (its reducer sits in reference cycles) while its process group lives
        dist.barrier()  # leave together: no process exits while another still talks to it
        dist.destroy_process_group()


def save(run, model, optimizers, state, path=None):
    """Every process calls this, so that each one's RNG state goes in; process 0 writes the file (ckpt.pt, or
    path). A LoRA run saves only its adapters, with the path and sha256 of the base they need."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        die(f"the weights are not finite at step {state.iter_num}; not saved, {state.kept}")
    rng = {'torch': every_rank(run, torch.get_rng_state()), 'data': state.data_rng.get_state(),
           'cuda': every_rank(run, torch.cuda.get_rng_state()) if run.dev_type == 'cuda' else None}
    weights = {k: v for k, v in model.state_dict().items() if 'lora_' in k or not state.lora}
    if run.master:
        save_checkpoint(path or state.ckpt_path, {
            'model_type': 'gpt', 'model': weights, 'optimizer': [o.state_dict() for o in optimizers],
            'model_args': state.model_args, 'iter_num': state.iter_num, 'best_val_loss': state.best_val_loss,
            'best_iter': state.best_iter,
            'train_time': state.train_time, 'config': state.config, 'tokenizer': state.tokenizer,
            'template': state.template, 'rng': rng,
            **({'lora': state.lora, 'base': state.base} if state.lora else {})})
    state.kept = state.kept if path else f"{state.ckpt_path} keeps step {state.iter_num}"


def export_checkpoint(run, model, state):
    """--export: init_from's model (LoRA merged) as an ordinary checkpoint. Every process: save() gathers."""
    if state.lora:
        from lora import merge_lora
        merge_lora(model)
        state.lora = None
    save(run, model, [], state)
    run.log(f"wrote {state.ckpt_path}: the model of {init_from}, as an ordinary checkpoint")


def compile_and_wrap(run, model, data):
    """torch.compile where asked (on CUDA by default), then DDP across processes."""
    compiled = model
    if str(compile).lower() == 'true' or (str(compile).lower() == 'auto' and run.dev_type == 'cuda'):
        try:  # compile now, on one batch, so that a failure shows here; the RNG is left as it was
            compiled = torch.compile(model)
            with torch.random.fork_rng(devices=[run.dev] if run.dev_type == 'cuda' else []), run.ctx:
                ix = data.train.random_starts((batch_size,), model.block_size, torch.Generator())
                compiled(*get_batch(data.train, ix, model.block_size, run.dev))
        except Exception as e:
            first = next(iter(str(e).splitlines()), '')[:100]  # a message may be empty, or many lines long
            run.log(f"warning: torch.compile failed ({type(e).__name__}: {first}); running eagerly")
            compiled = model
    if not run.ddp:
        return compiled, compiled
    from torch.nn.parallel import DistributedDataParallel as DDP
    return compiled, DDP(compiled, device_ids=[run.local_rank] if run.dev_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device, ctx=nullcontext()):
    """Mean loss over the same eval_iters random batches of each split (on pairs: of response tokens)."""
    model.eval()
    out = {}
    for name, split in splits.items():
        g = torch.Generator().manual_seed(0)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            ix = split.random_starts((batch_size,), block_size, g)
            with ctx:
                losses[k] = model(*get_batch(split, ix, block_size, device))[1].item()
        out[name] = losses.mean().item()
    model.train()
    return out


def train(run, raw_model, optimizers, data, state):
    """Train until max_iters, max_time or a signal; evaluate and save every eval_interval steps."""
    model, train_model = compile_and_wrap(run, raw_model, data)
    caught = {'signal': 0}  # Ctrl-C or SIGTERM: finish the current step, save it, say how to resume, exit
    before = {s: signal.signal(s, lambda signum, frame: caught.update(signal=signum))
              for s in (signal.SIGINT, signal.SIGTERM)}
    begin_log(run, raw_model, state)
    start_iter, start_time = state.iter_num, state.train_time
    t_start = time.time() - start_time  # a resumed run's clock goes on from the time it had trained
    t0 = time.time()
    while True:
        # stop on the step count, the time budget, or a signal to any process
        signum, state.train_time = agree(run, caught['signal'], time.time() - t_start)
        signum = int(signum)
        last_step = state.iter_num >= max_iters or (max_time > 0 and state.train_time >= max_time) or signum
        resumed_here = init_from == 'resume' and state.iter_num == start_iter  # that step was evaluated already
        if (state.iter_num % eval_interval == 0 or last_step) and not resumed_here and not signum:
            evaluate_and_save(run, model, raw_model, optimizers, data, state)
            t0 = time.time()  # the eval is not training time for the next progress line
        if signum:
            stop_on_signal(run, raw_model, optimizers, state, signum, saved=state.iter_num > start_iter)
        if last_step:
            break
        set_lr(optimizers, state)
        loss = train_step(run, train_model, raw_model, optimizers, data, state)
        state.iter_num += 1
        if state.iter_num % log_interval == 0 and run.master:
            log_progress(run, state, loss, (time.time() - t0) / log_interval)
            t0 = time.time()
    for s, handler in before.items():  # Ctrl-C while sampling raises KeyboardInterrupt again, as before training
        signal.signal(s, handler)
    if state.iter_num > start_iter:
        run.log(f"trained {state.iter_num - start_iter} steps in {state.train_time - start_time:.1f}s; "
                f"saved {state.ckpt_path}")
    if run.dev_type == 'cuda':
        run.log(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")


def begin_log(run, model, state):
    """What a step is (tokens; FLOPs for MFU), and log.csv's header: an unwritable out_dir stops us here."""
    T = model.block_size
    state.tokens_per_iter = batch_size * T * gradient_accumulation_steps * run.world_size
    run.log(f"tokens per optimizer step: {state.tokens_per_iter:,} = batch_size {batch_size} x block_size {T}"
            f" x gradient_accumulation_steps {gradient_accumulation_steps} x processes {run.world_size}")
    n_params, cfg = sum(p.numel() for p in model.parameters()), state.model_args
    state.flops_per_iter = (6 * n_params + 12 * cfg['n_layer'] * cfg['n_embd'] * T) * state.tokens_per_iter
    state.lr = get_lr(state.iter_num, 0, learning_rate, min_lr, warmup_iters)
    if not os.path.exists(os.path.join(ROOT, out_dir, 'log.csv')) or init_from != 'resume':
        write_csv(run, state, 'header')


def evaluate_and_save(run, model, raw_model, optimizers, data, state):
    """The `step N:` line (on instruction pairs, of response tokens only), its row in log.csv, a checkpoint."""
    splits = {'train': data.train, 'val': data.val}
    losses = estimate_loss(model, splits, batch_size, raw_model.block_size, eval_iters, run.dev, run.ctx)
    run.log(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if not math.isfinite(losses['train'] + losses['val']):
        die(f"the loss is not finite at step {state.iter_num}; not saved, {state.kept}")
    write_csv(run, state, 'eval', losses['train'], losses['val'], losses['val'] / math.log(2) / data.bytes_per_token)
    # as nanoGPT keeps its best model, but beside the latest; the model a fine-tune starts from is a candidate too
    if agree(run, losses['val'])[0] < state.best_val_loss:
        state.best_val_loss, state.best_iter = losses['val'], state.iter_num
        save(run, raw_model, [], state, os.path.join(ROOT, out_dir, 'best.pt'))
    if state.iter_num > 0:
        save(run, raw_model, optimizers, state)


def stop_on_signal(run, model, optimizers, state, signum, saved):
    """After Ctrl-C or SIGTERM: save the step just finished, say how to resume, and exit 128 + signum."""
    if saved:
        save(run, model, optimizers, state)
    run.log(f"{signal.Signals(signum).name} at step {state.iter_num}: "
            f"{'saved ' + state.ckpt_path if saved else 'nothing new to save'}; "
            f"continue with the same command and --init_from=resume")
    finish_processes(run)
    sys.exit(128 + signum)


def get_lr(it, progress, learning_rate, min_lr, warmup_iters, schedule='cosine'):
    """Linear warmup for warmup_iters steps, then a decay to min_lr as progress goes from 0 to 1: 'cosine'
    decays all the way; 'wsd' (warmup-stable-decay) holds the peak, then decays linearly over the last 40%."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)  # never 0, even at step 0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == 'wsd':
        coeff = min(1.0, (1.0 - progress) / 0.4)  # 1 until 60%, then linearly to 0
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


def set_lr(optimizers, state):
    """This step's rate from the schedule, in every group of every optimizer (Muon's at its own scale)."""
    decay_iters = lr_decay_iters or max_iters
    # how far the decay has gone: by steps after warmup, or by time used, whichever is further
    progress = max((state.iter_num - warmup_iters) / max(decay_iters - warmup_iters, 1),
                   state.train_time / max_time if max_time > 0 else 0.0)
    if not decay_lr:
        progress = 0.0  # the peak rate, for good
    state.lr = get_lr(state.iter_num, progress, learning_rate, min_lr, warmup_iters, schedule)
    for opt in optimizers:
        for group in opt.param_groups:
            group['lr'] = group['base_lr'] * state.lr / learning_rate


def train_step(run, model, raw_model, optimizers, data, state):
    """One optimizer step: the global batch is world_size x gradient_accumulation_steps micro-batches,
    drawn alike on every process, each process taking its slice. Returns the last micro-batch's loss."""
    T = raw_model.block_size
    ix = data.train.random_starts((run.world_size * gradient_accumulation_steps, batch_size), T, state.data_rng)
    for micro in range(gradient_accumulation_steps):
        if run.ddp:  # only the last micro-step averages the gradients across processes
            model.require_backward_grad_sync = micro == gradient_accumulation_steps - 1
        x, y = get_batch(data.train, ix[run.rank * gradient_accumulation_steps + micro], T, run.dev)
        with run.ctx:
            _, loss = model(x, y)
        run.scaler.scale(loss / gradient_accumulation_steps).backward()
    if agree(run, not math.isfinite(loss.item()))[0]:
        die(f"the loss is not finite at step {state.iter_num}; stopped, {state.kept}. Try a lower learning_rate")
    if grad_clip > 0:
        for opt in optimizers:
            run.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for p in raw_model.parameters() if p.requires_grad], grad_clip)
    for opt in optimizers:
        run.scaler.step(opt)
        opt.zero_grad(set_to_none=True)
    run.scaler.update()
    return loss.item()


def log_progress(run, state, loss, dt):
    """The progress line and its row in log.csv; dt is the time of a step, over the last log_interval."""
    eta = min((max_iters - state.iter_num) * dt, max_time - state.train_time if max_time > 0 else math.inf)
    peak = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}  # dense bf16 FLOP/s
    peak_flops = next((v for k, v in peak.items() if run.dev_type == 'cuda' and k in torch.cuda.get_device_name()), 0)
    mfu = f", mfu {100 * state.flops_per_iter / dt / peak_flops:.1f}%" if peak_flops else ''
    print(f"iter {state.iter_num}: loss {loss:.4f}, lr {state.lr:.2e}, {dt * 1000:.1f} ms/iter, "
          f"{state.tokens_per_iter / dt:,.0f} tok/s{mfu}, eta {eta:.0f}s")
    write_csv(run, state, 'train', loss)


def write_csv(run, state, kind, train_loss='', val_loss='', val_bpb=''):
    """Process 0 adds a row to <out_dir>/log.csv: 'train' (progress), 'eval' (the step lines), 'final' (whole
    split), or the 'header' of a new file. A folder that can't be written, or a full disk: one line, stop."""
    fmt = lambda v: f"{v:.6f}" if isinstance(v, float) else v
    row = 'kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb' if kind == 'header' else \
        (f"{kind},{state.iter_num},{state.iter_num * state.tokens_per_iter},{state.train_time:.3f},{state.lr:.6g},"
         f"{fmt(train_loss)},{fmt(val_loss)},{fmt(val_bpb)}")
    path = os.path.join(ROOT, out_dir, 'log.csv')
    try:
        if run.master:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w' if kind == 'header' else 'a') as f:
                f.write(row + '\n')
    except OSError as e:
        die(f"cannot write {path} ({e.strerror or e}); give another --out_dir, or free some space")


# ----------------------------------------------------- evaluation and sampling
def best_model(model, data, state):
    """After training, the whole-split line and the samples are of the step with the lowest val loss estimate."""
    if not math.isfinite(state.best_val_loss):  # stopped before its first eval: no best.pt
        return
    if state.best_iter != state.iter_num:
        best = load_checkpoint(os.path.join(ROOT, out_dir, 'best.pt'), 'gpt', data.tok, dataset)
        model.load_state_dict(best['model'], strict=not state.lora)
    print(f"the model below: step {state.best_iter}, whose val loss {state.best_val_loss:.4f} was the lowest (best.pt)"
          + (f"; {state.ckpt_path} keeps step {state.iter_num} to resume" if state.best_iter != state.iter_num else ''))


def inference_model(model, state):
    """The model to evaluate and sample: LoRA merged into its weights, then int8 or NF4 if quantize asks. A
    QLoRA model stays as it trained (4-bit base plus adapters): merging would mean quantizing it again."""
    if state.lora and not state.lora['quantize']:
        from lora import merge_lora
        merge_lora(model)
    if quantize and not (state.lora and state.lora['quantize']):
        from quant import quantize_model
        print(quantize_model(model, quantize))  # how much smaller the weights became
    return model.eval()


@torch.no_grad()
def full_val_loss(model, split, block_size, device, batch_size=64, ctx=nullcontext(), token_bytes=None):
    """Loss over the whole split, and bits per byte if token_bytes (each id's UTF-8 length) is given: every
    target of split.eval_windows once (on instruction pairs: every response token)."""
    model.eval()
    n = len(split.ids)
    starts, last = split.eval_windows(block_size)
    nats, count, nbytes = 0.0, 0, 0
    for b in range(0, len(starts), batch_size):
        s, e = starts[b:b + batch_size, None], last[b:b + batch_size, None]
        pos = np.minimum(s + np.arange(block_size + 1), n - 1)  # windows past the end repeat the last id
        ids = torch.from_numpy(split.ids[pos].astype(np.int64))
        scored = torch.from_numpy(s + 1 + np.arange(block_size) <= e)  # (B, T): targets inside the window
        if split.mask is not None:
            scored &= torch.from_numpy(split.mask[pos[:, 1:]] == 1)
        if not scored.any():
            continue
        y = ids[:, 1:].masked_fill(~scored, -1)
        with ctx:
            loss = model(ids[:, :-1].to(device), y.to(device))[1]
        nats += loss.item() * scored.sum().item()
        count += scored.sum().item()
        if token_bytes is not None:
            nbytes += token_bytes[y[scored]].sum().item()
    model.train()
    return nats / max(count, 1), (nats / math.log(2) / nbytes if nbytes else None), count


def evaluate(run, model, data, state):
    """The final whole-split evaluation: val loss, bits per byte, and exact match on instruction pairs."""
    token_bytes = torch.tensor(data.tok.token_bytes)
    loss, bpb, count = full_val_loss(model, data.val, model.block_size, run.dev, batch_size, run.ctx, token_bytes)
    what = 'predictions' if data.val.mask is None else 'response tokens'
    print(f"whole-split val loss {loss:.4f} ({count:,} {what}), val bpb {bpb:.4f}")
    if data.val.mask is not None:
        from instruct import exact_match
        score = exact_match(model, data.val, data.tok, state.template['end'], data.meta.get('val_tasks'), run.dev,
                            run.ctx, kv_cache)
        print('exact match: ' + ', '.join(f"{task} {pct:.1f}%" for task, pct in score.items()))
    return loss, bpb


def sample(run, model, data, state):
    """num_samples continuations of the prompt (interactive: of each line of standard input), each printed as it
    is made. A sample ends at `stop`; a model trained on instruction pairs gets its prompt in the pairs'
    template, and their end marker is its default stop."""
    sep, end = state.template.get('sep', ''), stop or state.template.get('end', '')
    g = torch.Generator(device=run.dev).manual_seed(seed)
    if kv_cache and not model.causal:
        print("note: sampling without the KV cache: with causal=False each position sees the later ones, "
              "which a cached position never saw")
    for text in prompts(data.tok, model.block_size, sep):
        ids = data.tok.encode(text + sep)
        for _ in range(num_samples):
            print(text + sep, end='', flush=True)
            shown = [0]  # how much of the sample's text is printed
            def show(new, final=False):  # after each token: print the text that is sure (not a cut character, not
                words = data.tok.decode(new)  # the start of `end`) up to `end`; True once `end` is there
                cut = words.find(end) if end else -1
                sure = cut if cut >= 0 else len(words) if final else len(words.rstrip('\ufffd')) - max(len(end) - 1, 0)
                print(words[shown[0]:sure], end='', flush=True)
                shown[0] = max(shown[0], sure)
                return cut >= 0
            t0 = time.time()
            with run.ctx:
                out = model.generate(torch.tensor([ids], device=run.dev), max_new_tokens, temperature, top_k, top_p,
                                     kv_cache, g, show)
            show(out[0, len(ids):].tolist(), final=True)
            print('\n---------------', flush=True)
            n, dt = out.size(1) - len(ids), time.time() - t0  # the speed on stderr: stdout holds the text alone
            print(f"({n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s)", file=sys.stderr)


def prompts(tok, block_size, sep):
    """The prompt (checked before training); or with interactive=True, each line typed (or piped in) until an
    empty line or Ctrl-D, where a line that the model can't take is said and skipped."""
    while interactive:
        try:
            line = input('prompt> ')
        except EOFError:
            return
        if not line:
            return
        problem = prompt_problem(tok, line + sep, block_size)
        if problem:
            print(problem)
        else:
            yield line
    yield prompt


def main():
    data = load_data(dataset)  # token ids, loss masks, the tokenizer
    for problem in problems(SimpleNamespace(**knobs(globals())), ROOT, CONFIGURED):  # checks.py: settings that can't work
        die(problem)
    writes = writes_out_dir(SimpleNamespace(**knobs(globals()))) and int(os.environ.get('RANK', 0)) == 0
    with claimed(os.path.join(ROOT, out_dir) if writes else None):  # a writing run holds out_dir, from the start
        run = setup_processes()  # one process or torchrun's; device and precision
        model, state = build_model(run, data)  # scratch, resume, or a checkpoint to fine-tune
        trained = max_iters > 0 and not eval_only  # a resumed run at or past max_iters trains no step, then evaluates
        if trained:
            optimizers = make_optimizers(run, model, state)
            train(run, model, optimizers, data, state)
        elif export:  # max_iters=0 from a checkpoint, asked to write it out
            export_checkpoint(run, model, state)
        finish_processes(run)
        if not run.master:
            return
        if trained:
            best_model(model, data, state)
        model = inference_model(model, state)
        if trained or eval_only:
            loss, bpb = evaluate(run, model, data, state)
        if trained:
            write_csv(run, state, 'final', '', loss, bpb)
    if not eval_only:  # eval_only: model, then evaluate
        sample(run, model, data, state)  # sample-only (max_iters=0): model, then sample

if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C after training, while sampling
        sys.exit(130)
