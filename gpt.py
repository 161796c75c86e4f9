"""
A GPT in one file, read from top to bottom: the knobs, the data, the model (in the lecture's order),
sampling, checkpoints, and the steps of a run, which main() lists in the order they run.

    python prepare.py                                  # once: writes data/shakespeare_char/
    python gpt.py                                      # trains a small GPT on a CPU, then samples
    python gpt.py --init_from=resume --max_iters=0 --prompt="ROMEO:"  # sample from out/ckpt.pt

The model is the lecture's ("Let's build GPT"), each part one switch. By default it trains with newer
parts (RoPE, RMSNorm, QK-norm, Muon, a warmup-stable-decay schedule): at equal time on a CPU Muon was
the clear win, the others no worse (docs/results.md). config/lecture/parts.py has the lecture's own.

The lecture's names, and this file's (nanoGPT's) for the same things:

    the lecture                    this file
    Head (key, query, value)       one slice of MultiHeadAttention.c_attn: every head at once
    MultiHeadAttention.proj        MultiHeadAttention.c_proj
    wei                            att
    FeedForward.net                FeedForward.c_fc, act, c_proj
    Block.sa, Block.ffwd           Block.attn, Block.mlp
    token_embedding_table          GPT.wte
    position_embedding_table       GPT.wpe (ln_f and lm_head: the same)

Beside it (docs/design.md maps them): machine, roads, checks, checkpoint, loading, logbook, stream and
tokenizer; the next steps, imported where a knob asks: muon, quant, lora, instruct, gpt2, export.
"""
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as recompute

from checkpoint import claimed, load_checkpoint, save_checkpoint
from checks import die, exporting, model_problems, problems, will_train, writes_out_dir
from configurator import configure, knobs
from loading import restore_optimizers, restore_randomness, resume, start_from
from logbook import begin_log, log_progress, write_csv
from machine import caught_signals, compile_and_wrap, finish_processes, gather, largest, start_processes
from prepare import load_prepared
import roads
from stream import Printer, prompts

# -----------------------------------------------------------------------------
dataset = 'shakespeare_char'  # reads data/<dataset>/ (made by prepare.py)
out_dir = 'out'  # ckpt.pt (the latest step), best.pt (the lowest val loss), log.csv; from this file
init_from = 'scratch'  # 'scratch', 'resume' (<out_dir>/ckpt.pt), a checkpoint, gpt2 or a HF folder
eval_only = False  # with a loaded model: print the whole-split val loss and bpb, then exit
export = ''  # init_from=PATH, max_iters=0, to a new out_dir: 'true' (a ckpt.pt), 'hf' or 'gguf' (export.py)
device = 'auto'  # 'auto' picks cuda, then mps, then cpu
dtype = 'auto'  # 'auto': bf16 autocast on GPUs (fp16 on older CUDA); on a CPU, timed (roads.py)
compile = 'auto'  # torch.compile the model: 'auto' means on CUDA only; true/false force it
seed = 1337  # seeds the init, the batches, dropout and sampling: the same seed, the same run
# model
n_layer = 4  # transformer blocks
n_head = 4  # attention heads in each block; each is n_embd // n_head wide
n_embd = 128  # the width of the residual stream: each token's vector
block_size = 64  # the longest context the model sees
dropout = 0.0  # the share of activations zeroed while training (attention, residuals, embeddings)
# modern parts, each one switch (config/classic.py turns them all off: nanoGPT's GPT-2 parts)
rope = True  # rotary position embeddings instead of a learned position table
rmsnorm = True  # RMSNorm instead of LayerNorm
qk_norm = True  # normalize queries and keys before attention
relu2 = False  # ReLU squared instead of GELU in the feed-forward network
# GPT-2's parts (nanoGPT's too) that the lecture lacks
tie_weights = True  # the output head shares the token embedding matrix (the lecture's has its own)
gelu_tanh = False  # GELU by its tanh approximation, as GPT-2 was trained (init_from=gpt2 sets it)
# the lecture's parts, each one switch (config/lecture/ builds its steps with them)
bias = False  # biases in the Linears and the head, as in the lecture (nanoGPT's knob)
relu = False  # ReLU instead of GELU in the feed-forward network, as in the lecture
ffn = True  # a feed-forward network in each block
attention = True  # self-attention in each block; False: a position sees only itself (an experiment)
residual = True  # residual connections, x + f(x); False: x = f(x)
norm = True  # the norms before attention, before the feed-forward network and before the head
pos = True  # position information (the learned table, or rope); False: none
causal = True  # the mask that hides later positions; False: each sees the future (an experiment)
weight_init = 'nanogpt'  # 'nanogpt': N(0, 0.02), projections smaller by depth; 'pytorch': its own
# training
optimizer = 'muon'  # 'muon': Muon for the blocks' matrices, AdamW for the rest; or 'adamw' for all
muon_lr = 0.02  # Muon's peak rate (scaled by the same schedule)
newton_schulz = 'auto'  # Muon's precision: 'float32', 'bfloat16' or 'auto' (timed on a CPU, roads.py)
schedule = 'wsd'  # 'wsd': warmup, stable, then a linear decay; or 'cosine' decay after warmup
batch_size = 8  # sequences per micro-step, per process
gradient_accumulation_steps = 3  # micro-steps per optimizer step: a bigger batch, not more memory
max_iters = 2000  # optimizer steps; 0 with a loaded model: only sample (or evaluate, or export)
max_time = 0.0  # seconds of training, 0 for no limit; this or max_iters, whichever comes first
learning_rate = 2e-3  # peak rate, after warmup
min_lr = 2e-4  # the decay ends here
decay_lr = True  # False: after warmup the rate stays at learning_rate (the lecture's constant rate)
warmup_iters = 100  # steps of linear warmup from near 0 to learning_rate
lr_decay_iters = 0  # steps of warmup plus decay; 0 means max_iters
weight_decay = 0.1  # AdamW's, on the matrices it trains (under Muon: embeddings and head)
beta1 = 0.9  # AdamW's momentum: how much of the last gradients' mean each step keeps
beta2 = 0.99  # AdamW's memory of the squared gradients (0.999 is PyTorch's default)
grad_clip = 1.0  # clip the gradient norm to this; 0 disables
eval_interval = 250  # estimate the loss (and save) every this many steps
eval_iters = 20  # batches per loss estimate
log_interval = 50  # a progress line every this many steps
# memory and fine-tuning
gradient_checkpointing = False  # recompute blocks' activations in backward: less memory, more time
quantize = ''  # '', 'int8' or 'nf4': the blocks' Linears to evaluate and sample (a LoRA base's)
int8_road = 'auto'  # int8's matmul: 'float', 'kernel', or 'auto': the faster of the exact ones, timed
lora_rank = 0  # > 0 (with init_from=PATH): train only a low-rank update B @ A of the blocks' Linears
lora_alpha = 16.0  # the low-rank update is scaled by lora_alpha / lora_rank
# sampling, after training
prompt = '\n'  # sampling starts from this text
num_samples = 1  # samples drawn from each prompt, as one batch (printed when done; one streams)
max_new_tokens = 500  # tokens sampled after the prompt (fewer if a sample reaches `stop`)
temperature = 0.8  # 0 means greedy
top_k = 0  # keep only the k most likely tokens; 0 keeps all
top_p = 1.0  # keep the fewest tokens whose probability adds up to top_p; 1.0 keeps all
kv_cache = True  # reuse keys and values of earlier positions while sampling
stop = ''  # end a sample at this text; '': none, or the end marker of instruction pairs
interactive = False  # prompts from standard input, a line each, until an empty line or Ctrl-D
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIGURED = {}  # the knobs that a config file or the command line set (configurator.py fills it)


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
        """The whole-split loss's windows: where each starts, and its last target's position.
        Consecutive windows, so every token but the first is predicted once."""
        starts = np.arange(0, len(self.ids) - 1, block_size)
        return starts, np.minimum(starts + block_size, len(self.ids) - 1)


def load_data(dataset):
    """The train and val splits, the tokenizer and meta.json, as prepare.py wrote (and reads) them."""
    meta, tok, ids, masks = load_prepared(ROOT, dataset)
    splits = {}
    for name in ('train', 'val'):
        splits[name] = Split(ids[name])
        if name in masks:  # instruction pairs: their loss mask comes along
            from instruct import PairSplit
            splits[name] = PairSplit(ids[name], masks[name])
    # bytes per scored token (on pairs: a response's), to show losses as bits per byte
    val = splits['val']
    scored = val.ids if val.mask is None else val.ids[val.mask == 1]
    bytes_per_token = np.array(tok.token_bytes)[scored].mean()
    return SimpleNamespace(train=splits['train'], val=val, tok=tok, meta=meta,
                           bytes_per_token=bytes_per_token)


def get_batch(split, ix, block_size, device):
    """Inputs ids[i:i+block_size] for each start i in ix, and targets shifted by one. Targets
    that the loss mask leaves out (a prompt's tokens) become -1, which cross_entropy ignores."""
    pos = ix.numpy()[:, None] + np.arange(block_size + 1)
    rows = torch.from_numpy(split.ids[pos].astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
    if split.mask is not None:
        y = y.masked_fill(torch.from_numpy(split.mask[pos[:, 1:]] == 0), -1)
    if device.startswith('cuda'):  # pinned memory lets the copy overlap with compute
        x = x.pin_memory().to(device, non_blocking=True)
        return x, y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ------------------------------------------------------------------- the model
@dataclass
class GPTConfig:
    """The architecture in one place (nanoGPT's name): GPT(config) and its parts take it, a checkpoint
    keeps it as model_args, gpt2.py gives GPT-2's. Defaults: nanoGPT's GPT-2; fields: the knobs."""
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    rope: bool = False
    rmsnorm: bool = False
    qk_norm: bool = False
    relu2: bool = False
    tie_weights: bool = True
    bias: bool = False
    relu: bool = False
    attention: bool = True
    ffn: bool = True
    residual: bool = True
    norm: bool = True
    pos: bool = True
    weight_init: str = 'nanogpt'
    causal: bool = True
    gelu_tanh: bool = False


class MultiHeadAttention(nn.Module):
    """n_head heads of masked self-attention, computed as one matmul (nanoGPT's
    CausalSelfAttention).

    The lecture's Head(head_size) has its own key, query and value Linears. Here one Linear,
    c_attn, makes all of them: its output is [q | k | v], and head h owns the columns
    h*hs:(h+1)*hs of each (hs = n_embd // n_head). view(B, T, nh, hs).transpose(1, 2) cuts those
    slices apart into a head dimension; the transpose back and view(B, T, C) is the lecture's
    torch.cat of the heads' outputs, which c_proj (the lecture's proj) then mixes."""

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        # query, key and value for all heads at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        # normalize each query and key: keeps attention logits in range at high lr
        self.qk_norm = config.qk_norm
        self.use_sdpa = True  # False runs attention(), the lecture's explicit masked softmax

    def attention(self, q, k, v):
        """The lecture's attention, written out: scores, the causal mask, softmax, dropout, a
        weighted sum of values. q is (B, nh, T, hs); k and v are (B, nh, L, hs), L >= T: with the
        KV cache, keys of earlier positions come first, and query t sits at position L - T + t."""
        T, L = q.size(2), k.size(2)
        # (B, nh, T, hs) @ (B, nh, hs, L) -> (B, nh, T, L)
        att = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))
        # query t sees keys up to its own position; causal=False (an experiment) sees all
        if self.causal:
            seen = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)  # (T, L)
            att = att.masked_fill(~seen, float('-inf'))
        # each row: how much query t takes from each key, adding up to 1
        att = F.softmax(att, dim=-1)
        self.att = att.detach()  # what each query looks at: plot.py --attention draws it
        # (B, nh, T, L) @ (B, nh, L, hs) -> (B, nh, T, hs)
        return F.dropout(att, self.dropout, self.training) @ v

    def forward(self, x, rope=None, cache=None, layer=0):
        """x (B, T, C). rope: the (cos, sin) of these positions (rotate(), just below), or None.
        cache: a KVCache (the sampling section) while sampling, else None; layer: which of its
        layers is this block's."""
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:  # beyond the lecture: queries and keys of unit scale
            q = F.rms_norm(q, (hs,))
            k = F.rms_norm(k, (hs,))
        if rope is not None:  # beyond the lecture: positions as rotations of queries and keys
            q = rotate(q, *rope)
            k = rotate(k, *rope)
        if cache is not None:  # sampling: this chunk's keys and values after the cached ones
            k, v = cache.update(layer, k, v)  # (B, nh, L, hs)
        if self.use_sdpa and self.causal:
            y = self.fused_attention(q, k, v)
        else:
            y = self.attention(q, k, v)
        # heads side by side again: the lecture's torch.cat
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def fused_attention(self, q, k, v):
        """attention()'s numbers from PyTorch's fused kernel (flash attention on GPUs), which
        never stores the (T, L) matrix: equal to it in float32 (tested); under bf16 autocast
        attention() computes in bf16. Its is_causal masks top-left, so it serves T == L; one new
        query (cached sampling) sees every key and needs no mask; other shapes pass the mask."""
        T, L = q.size(2), k.size(2)
        mask = None
        if T != L and T != 1:
            mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(L - T)
        dropout_p = self.dropout if self.training else 0.0
        # in fp32 on a CPU: its fused bf16 backward ran 5-7x slower (AVX512-BF16 EPYC, 2026-11-26)
        if q.device.type == 'cpu':
            with torch.autocast('cpu', enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                      dropout_p=dropout_p, is_causal=T == L)
        return F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal=T == L)


def rotate(x, cos, sin):
    """Rotary position embedding (RoPE): turn each pair (x1[i], x2[i]) of a head's vector by an
    angle that grows with its position, so that a query-key product depends on how far apart the
    two are."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each; cos and sin are (T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class FeedForward(nn.Module):
    """Per position: Linear to 4x wider, a non-linearity, Linear back (nanoGPT's MLP)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.relu2, self.relu, self.gelu_tanh = config.relu2, config.relu, config.gelu_tanh
        self.dropout = nn.Dropout(config.dropout)

    def act(self, h):
        """The non-linearity: GELU (nanoGPT's), ReLU (the lecture's) or ReLU squared."""
        if self.relu2:
            return F.relu(h).square()
        if self.relu:
            return F.relu(h)
        if self.gelu_tanh:
            return F.gelu(h, approximate='tanh')
        return F.gelu(h)

    def forward(self, x):
        # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + feed-forward(norm(x)). The
    lecture's earlier steps leave out the feed-forward network, the residual connections or the
    norms."""

    def __init__(self, config):
        super().__init__()
        self.attn = None  # attention=False: the block is its feed-forward network alone
        if config.attention:
            self.ln_1 = make_norm(config)
            self.attn = MultiHeadAttention(config)
        if config.ffn:
            self.ln_2 = make_norm(config)
            self.mlp = FeedForward(config)
        self.ffn, self.residual = config.ffn, config.residual

    def forward(self, x, rope=None, cache=None, layer=0):
        if self.attn is not None:
            y = self.attn(self.ln_1(x), rope, cache, layer)  # (B, T, C)
            x = x + y if self.residual else y
        if self.ffn:
            y = self.mlp(self.ln_2(x))  # (B, T, C)
            x = x + y if self.residual else y
        return x


def make_norm(config):
    """LayerNorm (the lecture's and GPT-2's), RMSNorm (no mean, no bias), or nothing (norm off)."""
    if not config.norm:
        return nn.Identity()
    if config.rmsnorm:
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd)


class GPT(nn.Module):
    """Token and position embeddings, n_layer Blocks, a final norm and a head back to the
    vocabulary's logits, as config (a GPTConfig) says: its defaults are nanoGPT's GPT-2; a modern
    switch swaps in a newer part, a lecture's its own."""
    config_class = GPTConfig  # so loading.py makes a checkpoint's model_args one, never importing gpt

    def __init__(self, config):
        super().__init__()
        n_embd, block_size = config.n_embd, config.block_size
        self.block_size = block_size
        self.rope = config.rope and config.pos
        self.pos = config.pos
        self.causal = config.causal
        self.wte = nn.Embedding(config.vocab_size, n_embd)  # token embeddings
        # positions as rotations of queries and keys (rotate()), not a table added to the input
        if self.rope:
            hs = n_embd // config.n_head
            freqs = 10000.0 ** (-torch.arange(0, hs, 2) / hs)  # (hs/2,): slower for later pairs
            angles = torch.outer(torch.arange(block_size), freqs)  # (T, hs/2)
            self.register_buffer('rope_cos', angles.cos(), persistent=False)
            self.register_buffer('rope_sin', angles.sin(), persistent=False)
        elif config.pos:
            self.wpe = nn.Embedding(block_size, n_embd)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)
        # a tied head has none (GPT-2)
        self.lm_head = nn.Linear(n_embd, config.vocab_size, bias=config.bias and not config.tie_weights)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        # a way to run, not part of the architecture: set after building
        self.gradient_checkpointing = False
        # the lecture keeps PyTorch's: N(0, 1) embeddings, Linears U(+-1/sqrt(fan_in))
        if config.weight_init == 'nanogpt':
            self.nanogpt_init(config.n_layer)

    @contextmanager
    def explicit_attention(self):
        """Inside: every block's attention() (the explicit softmax), which keeps its weights in
        attn.att for look.py's page and plot.py's picture; after it, the fused kernel again."""
        attentions = [block.attn for block in self.blocks if block.attn is not None]
        for attn in attentions:
            attn.use_sdpa = False
        try:
            yield
        finally:
            for attn in attentions:
                attn.use_sdpa = True

    def nanogpt_init(self, n_layer):
        """nanoGPT's init: matrices N(0, 0.02), the projections into the residual stream smaller
        by depth (each block adds two), biases zero."""
        for name, p in self.named_parameters():
            if p.dim() >= 2 and name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
            elif p.dim() >= 2:
                torch.nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith('bias'):
                torch.nn.init.zeros_(p)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) token ids; targets (B, T), or None to get only the last position's logits.
        cache: a KVCache while sampling, whose pos says where these T tokens start."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0  # where these T tokens sit
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.rope:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])  # (T, hs/2) each
        elif self.pos:
            # (B, T, C) + (T, C)
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only the block's input; backward runs the block again (with the same dropout
                # masks: the RNG state is saved and restored) to get the activations it needs
                x = recompute(block, x, rope, cache, layer, use_reentrant=False)
            else:
                x = block(x, rope, cache, layer)  # (B, T, C)
        x = self.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:  # sampling needs only the last position's logits
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab_size)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        # targets of -1 (a prompt's tokens, under a loss mask) count for nothing
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss


# -------------------------------------------------------------------- sampling
class KVCache:
    """Every layer's keys and values of the positions so far: (n_layer, B, nh, block_size, hs)."""

    def __init__(self, n_layer, batch, n_head, block_size, head_size, device, dtype):
        self.k = torch.zeros(n_layer, batch, n_head, block_size, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0  # how many positions are filled; the model advances it after each forward

    def update(self, layer, k, v):
        """Store the new (B, nh, T, hs) keys and values at pos; return all so far."""
        end = self.pos + k.size(2)
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def sample_next(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One token per row from (B, vocab) logits; temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = (logits.float() - logits.float().amax(dim=-1, keepdim=True)) / temperature  # <= 0: can't overflow
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = F.softmax(logits, dim=-1)  # (B, vocab)
    if top_p < 1.0:  # nucleus: drop the tail once the more likely tokens already hold top_p
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        tail = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # the most likely always stays
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(tail, 0.0))
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


@torch.inference_mode()  # no_grad, lighter: no version counters; its tensors never enter autograd
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, kv_cache=True, generator=None,
             stop=None, stream=None):
    """Append up to max_new_tokens sampled tokens to each row of idx (B, T), printing nothing:
    stream(new) gets each row's sampled ids after every token; it stops once stop(ids) holds for
    every row. The context is cropped to block_size. With the cache, each step feeds only the
    newest token; a full cache is rebuilt from the last half block (one forward, at positions
    0..), so every token still sees half a block or more. While the text fits in block_size,
    cached and uncached give the same tokens. Without the causal mask there is no cache: its
    cached positions never saw the later tokens."""
    kv_cache = kv_cache and model.causal and model.blocks[0].attn is not None  # no attention, no keys
    T = model.block_size
    cache = None
    in_cache = 0  # how many tokens of idx the cache holds
    prompt_len = idx.size(1)
    for _ in range(max_new_tokens):
        if not kv_cache:
            logits, _ = model(idx[:, -T:])
        else:
            if cache is None or cache.pos == T:  # the first step, or a full cache: (re)build it
                keep = max(T // 2, 1)
                if cache is None and idx.size(1) <= T:
                    keep = idx.size(1)  # the whole prompt fits
                attn = model.blocks[0].attn
                head_size = model.wte.weight.size(1) // attn.n_head
                cache = KVCache(len(model.blocks), idx.size(0), attn.n_head, T, head_size, idx.device,
                                model.wte.weight.dtype)
                in_cache = idx.size(1) - keep
            logits, _ = model(idx[:, in_cache:], cache=cache)  # (B, 1, vocab_size)
            in_cache = idx.size(1)
        next_ids = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
        idx = torch.cat((idx, next_ids), dim=1)
        new = idx[:, prompt_len:].tolist()
        if stream is not None:
            stream(new)
        if stop is not None and all(stop(row) for row in new):
            break
    return idx


def sample(run, model, data, state, k):
    """num_samples continuations of the prompt (interactive: of each line of standard input),
    drawn as one batch: a token for every sample reads the weights once. One sample prints as it
    is made; several print when the batch is done. A sample ends at `stop`; a model trained on
    instruction pairs gets its prompt in the pairs' template, and their end marker is its stop."""
    sep = state.template.get('sep', '')
    end = k.stop or state.template.get('end', '')
    g = torch.Generator(device=run.dev).manual_seed(k.seed)
    if k.kv_cache and not model.causal:
        print("note: sampling without the KV cache: with causal=False each position sees the later ones, "
              "which a cached position never saw")
    for text in prompts(data.tok, model.block_size, sep, k.prompt, k.interactive):  # stream.py
        ids = data.tok.encode(text + sep)
        printer = Printer(data.tok, end)  # stream.py: the text that is ready, as it grows
        stream = printer.show if k.num_samples == 1 else None  # a batch's rows would interleave
        if stream is not None:
            print(text + sep, end='', flush=True)
        t0 = time.time()
        with run.ctx:
            batch = torch.tensor([ids] * k.num_samples, device=run.dev)  # (num_samples, T)
            out = generate(model, batch, k.max_new_tokens, k.temperature, k.top_k, k.top_p, k.kv_cache, g,
                           stop=printer.ends, stream=stream)
        for row in out[:, len(ids):].tolist():
            if stream is None:
                print(text + sep, end='')
                printer = Printer(data.tok, end)
            printer.show([row], final=True)
            print('\n---------------', flush=True)
        n, dt = out[:, len(ids):].numel(), time.time() - t0
        print(f"({n} tokens in {dt:.2f} s: {n / dt:.1f} tokens/s)", file=sys.stderr)  # stdout: text alone


# ----------------------------------------------------------------- checkpoints
def save(run, model, optimizers, state, path=None):
    """Every process calls this, so that each one's RNG state goes in; process 0 writes the file
    (ckpt.pt, or path) whole (checkpoint.py). A LoRA run saves only its adapters, with its base's
    path and sha256."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        die(f"the weights are not finite at step {state.iter_num}; not saved, {state.last_save}")
    rng = {'torch': gather(run, torch.get_rng_state()), 'data': state.data_rng.get_state()}
    rng['cuda'] = None
    if run.dev_type == 'cuda':
        rng['cuda'] = gather(run, torch.cuda.get_rng_state())
    weights = {}
    for k, v in model.state_dict().items():
        if 'lora_' in k or not state.lora:  # a LoRA run: its adapters alone
            weights[k] = v
    ckpt = {'model_type': 'gpt', 'model': weights, 'optimizer': [o.state_dict() for o in optimizers],
            'model_args': state.model_args, 'iter_num': state.iter_num, 'best_val_loss': state.best_val_loss,
            'best_iter': state.best_iter, 'train_time': state.train_time, 'config': state.config,
            'tokenizer': state.tokenizer, 'template': state.template, 'rng': rng, 'roads': state.roads}
    if state.lora:
        ckpt['lora'] = state.lora
        ckpt['base'] = state.base
    if run.master:
        save_checkpoint(path or state.ckpt_path, ckpt)
    if path is None:
        state.last_save = f"{state.ckpt_path} keeps step {state.iter_num}"


def best_model(model, data, state, k):
    """After training, the whole-split line and the samples are of the step of the lowest val loss."""
    if not math.isfinite(state.best_val_loss):  # stopped before its first eval: no best.pt
        return
    line = f"the model below: step {state.best_iter}, whose val loss {state.best_val_loss:.4f} was the lowest (best.pt)"
    if state.best_iter != state.iter_num:
        best = load_checkpoint(os.path.join(ROOT, k.out_dir, 'best.pt'), 'gpt', data.tok, k.dataset)
        model.load_state_dict(best['model'], strict=not state.lora)
        line += f"; {state.ckpt_path} keeps step {state.iter_num} to resume"  # the latest, if another
    print(line)


def export_checkpoint(run, model, data, state, k, configured=()):
    """--export: init_from's model, LoRA merged, as a plain checkpoint ('true'), or for other tools
    to run (export.py: 'hf', 'gguf'). Every process calls it: process 0 writes."""
    if k.export != 'true':
        from export import export
        score = lambda m: evaluate(run, m, data, state, k)  # the whole-split loss, for the model card
        run.log(export(model, state, os.path.join(ROOT, k.out_dir), k, configured, score, run.master))
        return
    if state.lora:
        from lora import merge_lora
        merge_lora(model)
        state.lora = None
    save(run, model, [], state)
    run.log(f"wrote {state.ckpt_path}: the model of {k.init_from}, as an ordinary checkpoint")


# ---------------------------------------------------------- the steps of a run
@dataclass
class State:
    """What the steps of a run share, in one place. save() writes most of it into ckpt.pt."""
    model_args: dict  # the GPT's arguments: the knobs' values, or a loaded checkpoint's
    config: dict  # every knob as this run uses it, saved with each checkpoint
    tokenizer: dict  # the dataset's tokenizer, described (tokenizer.py), saved with each checkpoint
    template: dict  # instruction pairs' 'sep' and 'end' markers, or {}
    ckpt_path: str  # <out_dir>/ckpt.pt
    data_rng: torch.Generator  # draws the training batches, alike on every process
    iter_num: int = 0  # optimizer steps done
    train_time: float = 0.0  # seconds trained, over resumes too: max_time is for the whole run
    best_val_loss: float = math.inf  # the lowest val loss estimate so far; inf: no best.pt yet
    best_iter: int = 0  # the step of that estimate: the step best.pt holds
    lr: float = 0.0  # this step's learning rate
    tokens_per_iter: int = 0  # tokens in one optimizer step, over all processes
    eval_s: float = 0.0  # the last eval's seconds: the progress line's eta counts the evals left
    norms: list = field(default_factory=list)  # the gradient norms of this log interval's steps
    update_ratio: float = 0.0  # the last logged step's update, over the weights' size
    made: dict = field(default_factory=dict)  # init_from's config and steps (export.py's card)
    flops_per_iter: float = 0.0  # the training FLOPs of a step, for the MFU estimate
    ckpt: dict = None  # the checkpoint resumed from, or None
    lora: dict = None  # a LoRA run's rank, alpha and quantize, or None
    base: dict = None  # a LoRA run's base: {'path', 'sha256', 'from'}
    roads: dict = None  # the precisions this run took (roads.py): a resumed run takes them again
    last_save: str = 'no checkpoint was written'  # what a fault leaves in place, said when it stops


def knob_model_args(k, vocab_size):
    """The GPT's architecture as the knobs set it: a GPTConfig's fields, as a dict (model_args)."""
    config = GPTConfig(vocab_size=vocab_size, block_size=k.block_size, n_layer=k.n_layer, n_head=k.n_head,
                       n_embd=k.n_embd, dropout=k.dropout, rope=k.rope, rmsnorm=k.rmsnorm, qk_norm=k.qk_norm,
                       relu2=k.relu2, tie_weights=k.tie_weights, bias=k.bias, relu=k.relu, ffn=k.ffn,
                       residual=k.residual, norm=k.norm, pos=k.pos, weight_init=k.weight_init, causal=k.causal,
                       gelu_tanh=k.gelu_tanh, attention=k.attention)
    return asdict(config)


def build_model(run, data, k, configured=()):
    """The model: fresh ('scratch'), the run in out_dir ('resume'), or another checkpoint's
    weights to fine-tune (init_from=PATH, from step 0; with LoRA if lora_rank > 0); and the State
    the later steps share."""
    model_args = knob_model_args(k, data.tok.vocab_size)
    template = {k: data.meta[k] for k in ('sep', 'end') if k in data.meta}
    state = State(model_args, vars(k).copy(), data.tok.describe(), template,
                  ckpt_path=os.path.join(ROOT, k.out_dir, 'ckpt.pt'),
                  # the same on every process: the global batch
                  data_rng=torch.Generator().manual_seed(k.seed))
    # dropout differs between processes; the batches come from data_rng
    torch.manual_seed(k.seed + run.rank)
    weights = None
    if k.init_from == 'resume':  # checkpoint.py: the run in out_dir, with its step, time and best
        weights = resume(state, k, configured, data, GPT, run.log)
    elif k.init_from != 'scratch':  # checkpoint.py: another model's weights, from step 0
        weights = start_from(state, k, configured, data, GPT, ROOT)
    # checks.py: a block_size (the knob's, a checkpoint's) too long for the data, or a prompt too long
    text = k.prompt + state.template.get('sep', '')
    for problem in model_problems(data, state.model_args['block_size'], text,
                                  k.stop, k.interactive):
        die(problem)
    model = GPT(GPTConfig(**state.model_args))
    n_params = sum(p.numel() for p in model.parameters())
    run.log(f"model: {n_params / 1e6:.2f}M parameters, {state.model_args}")
    if weights is not None:
        model.load_state_dict(weights)
    if state.lora:  # lora.py loads only here, when a run has LoRA
        from lora import adapt, summary
        adapters = state.ckpt['model'] if state.ckpt is not None else None  # resumed, or new
        adapt(model, state.lora, adapters)
        run.log(summary(model, state.lora))
    model.gradient_checkpointing = k.gradient_checkpointing
    return model.to(run.dev), state


def choose_roads(run, model, data, state, trains, k):
    """The precisions of the forward passes and of Muon's Newton-Schulz (roads.py): as the knobs
    ask, as the checkpoint has them, or timed here on a batch."""
    ix = data.train.random_starts((k.batch_size,), model.block_size, torch.Generator())
    batch = get_batch(data.train, ix, model.block_size, run.dev)
    asked = {'dtype': k.dtype, 'newton_schulz': k.newton_schulz}
    muon = k.optimizer == 'muon' and trains and not state.lora
    state.roads = roads.choose(run, model, state.model_args, batch, asked, state.roads or {}, trains, muon)


def make_optimizers(run, model, state, k):
    """AdamW, with weight decay on the matrices it trains, plus Muon (no weight decay) for the
    blocks' matrices; only AdamW on a LoRA update. On resume, their state comes back."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fused = run.dev_type == 'cuda'
    if state.lora:
        optimizers = [torch.optim.AdamW(params.values(), lr=k.learning_rate, betas=(k.beta1, k.beta2),
                                        weight_decay=0.0, fused=fused)]
    else:
        muon_params, decay, no_decay = [], [], []
        if k.optimizer == 'muon':  # muon.py loads only here, when a run has Muon
            from muon import Muon, for_muon
        for name, p in params.items():
            if k.optimizer == 'muon' and for_muon(name, p):
                muon_params.append(p)
            elif p.dim() >= 2:  # AdamW decays matrices only
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [{'params': decay, 'weight_decay': k.weight_decay}, {'params': no_decay, 'weight_decay': 0}]
        optimizers = [torch.optim.AdamW(groups, k.learning_rate, (k.beta1, k.beta2), fused=fused)]
        if muon_params:
            ns_dtype = getattr(torch, state.roads['newton_schulz'])  # roads.py's choice
            optimizers.append(Muon(muon_params, lr=k.muon_lr, ns_dtype=ns_dtype))
    restore_optimizers(optimizers, state, k, run.master)  # loading.py: as a resumed run left them
    for opt, base_lr in zip(optimizers, (k.learning_rate, k.muon_lr)):
        for group in opt.param_groups:
            group['base_lr'] = base_lr  # the schedule scales every group by lr / learning_rate
    return optimizers


def train(run, raw_model, optimizers, data, state, k):
    """Train until max_iters, max_time or a signal; evaluate and save every eval_interval steps."""
    def one_batch():  # what torch.compile compiles on
        ix = data.train.random_starts((k.batch_size,), raw_model.block_size, torch.Generator())
        return get_batch(data.train, ix, raw_model.block_size, run.dev)

    model, train_model = compile_and_wrap(run, raw_model, k.compile, one_batch)  # machine.py
    state.lr = get_lr(state.iter_num, 0, k.learning_rate, k.min_lr, k.warmup_iters)
    begin_log(run, raw_model, state, k)  # logbook.py: what a step is, and log.csv's header
    start_iter, start_time = state.iter_num, state.train_time
    t_start = time.time() - start_time  # a resumed run's clock goes on from the time it had trained
    t0 = time.time()
    # Ctrl-C or SIGTERM: finish the step, save it, say how to resume, exit
    with caught_signals() as caught:
        while True:
            # stop on the step count, the time budget, or a signal to any process
            signum, state.train_time = largest(run, caught['signal'], time.time() - t_start)
            signum = int(signum)
            out_of_time = k.max_time > 0 and state.train_time >= k.max_time
            last_step = state.iter_num >= k.max_iters or out_of_time or signum
            # the step a run resumes at was evaluated before it was saved
            resumed_here = k.init_from == 'resume' and state.iter_num == start_iter
            due = state.iter_num % k.eval_interval == 0 or last_step
            if due and not resumed_here and not signum:
                t_eval = time.time()
                evaluate_and_save(run, model, raw_model, optimizers, data, state, k)
                t0 = time.time()  # the eval is not training time for the next progress line
                state.eval_s = t0 - t_eval
            if signum:
                stop_on_signal(run, raw_model, optimizers, state, signum, state.iter_num > start_iter)
            if last_step:
                break
            set_lr(optimizers, state, k)
            loss = train_step(run, train_model, raw_model, optimizers, data, state, k)
            state.iter_num += 1
            if state.iter_num % k.log_interval == 0 and run.master:
                log_progress(run, state, loss, (time.time() - t0) / k.log_interval, k)
                t0 = time.time()
    if state.iter_num > start_iter:
        run.log(f"trained {state.iter_num - start_iter} steps in {state.train_time - start_time:.1f}s; "
                f"saved {state.ckpt_path}")
    if run.dev_type == 'cuda':
        run.log(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")


def evaluate_and_save(run, model, raw_model, optimizers, data, state, k):
    """The `step N:` line (on instruction pairs, of response tokens only), its row in log.csv, a
    checkpoint, and best.pt when the val loss is the lowest so far."""
    splits = {'train': data.train, 'val': data.val}
    T = raw_model.block_size
    losses = estimate_loss(model, splits, k.batch_size, T, k.eval_iters, run.dev, run.ctx)
    run.log(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if not math.isfinite(losses['train'] + losses['val']):
        die(f"the loss is not finite at step {state.iter_num}; not saved, {state.last_save}")
    val_bpb = losses['val'] / math.log(2) / data.bytes_per_token
    write_csv(run, state, 'eval', train_loss=losses['train'], val_loss=losses['val'], val_bpb=val_bpb)
    # as nanoGPT keeps its best model, but beside the latest; a fine-tune's first model is a candidate
    if largest(run, losses['val'])[0] < state.best_val_loss:
        state.best_val_loss, state.best_iter = losses['val'], state.iter_num
        save(run, raw_model, [], state, os.path.join(ROOT, k.out_dir, 'best.pt'))
    if state.iter_num > 0:
        save(run, raw_model, optimizers, state)


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device, ctx=nullcontext()):
    """Mean loss over the same eval_iters random batches of each split (pairs: response tokens)."""
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


def stop_on_signal(run, model, optimizers, state, signum, saved):
    """After Ctrl-C or SIGTERM: save the step just done, say how to resume, exit 128 + signum."""
    what = 'nothing new to save'
    if saved:
        save(run, model, optimizers, state)
        what = f"saved {state.ckpt_path}"
    run.log(f"{signal.Signals(signum).name} at step {state.iter_num}: {what}; continue with the same "
            f"command and --init_from=resume")
    finish_processes(run)
    sys.exit(128 + signum)


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


def set_lr(optimizers, state, k):
    """This step's rate from the schedule, in each group of each optimizer (Muon's at its scale)."""
    decay_iters = k.lr_decay_iters or k.max_iters
    # how far the decay has gone: by steps after warmup, or by time used, whichever is further
    progress = (state.iter_num - k.warmup_iters) / max(decay_iters - k.warmup_iters, 1)
    if k.max_time > 0:
        progress = max(progress, state.train_time / k.max_time)
    if not k.decay_lr:
        progress = 0.0  # the peak rate, for good
    state.lr = get_lr(state.iter_num, progress, k.learning_rate, k.min_lr, k.warmup_iters, k.schedule)
    for opt in optimizers:
        for group in opt.param_groups:
            group['lr'] = group['base_lr'] * state.lr / k.learning_rate


def train_step(run, model, raw_model, optimizers, data, state, k):
    """One optimizer step: the global batch is world_size x gradient_accumulation_steps
    micro-batches, drawn alike on every process, each process taking its slice. Returns the last
    micro-batch's loss."""
    T = raw_model.block_size
    n_micro = run.world_size * k.gradient_accumulation_steps
    ix = data.train.random_starts((n_micro, k.batch_size), T, state.data_rng)  # (n_micro, B)
    for micro in range(k.gradient_accumulation_steps):
        if run.ddp:  # only the last micro-step averages the gradients across processes
            model.require_backward_grad_sync = micro == k.gradient_accumulation_steps - 1
        x, y = get_batch(data.train, ix[run.rank * k.gradient_accumulation_steps + micro], T, run.dev)
        with run.ctx:
            _, loss = model(x, y)
        run.scaler.scale(loss / k.gradient_accumulation_steps).backward()
    if largest(run, not math.isfinite(loss.item()))[0]:
        die(f"the loss is not finite at step {state.iter_num}; stopped, {state.last_save}. "
            f"Try a lower learning_rate")
    for opt in optimizers:
        run.scaler.unscale_(opt)  # the true gradients (fp16's are scaled), to measure and clip
    trained = [p for p in raw_model.parameters() if p.requires_grad]
    # the norm before clipping, for log.csv; grad_clip=0 measures it and clips nothing
    state.norms.append(torch.nn.utils.clip_grad_norm_(trained, k.grad_clip or math.inf).item())
    logged = (state.iter_num + 1) % k.log_interval == 0  # its update is measured (update_ratio)
    before = [p.detach().clone() for p in trained] if logged else []
    for opt in optimizers:
        run.scaler.step(opt)
        opt.zero_grad(set_to_none=True)
    run.scaler.update()
    if logged:  # |the step's change| / |the weights|, over every trained tensor: 1e-3 is typical
        change = sum((p.detach() - b).float().pow(2).sum() for p, b in zip(trained, before))
        state.update_ratio = (change / sum(b.float().pow(2).sum() for b in before)).sqrt().item()
    return loss.item()


def inference_model(model, state, k):
    """The model to evaluate and sample: LoRA merged into its weights, then int8 or NF4 if
    quantize asks, and on a CPU its float weights input-major (roads.py: a batch samples faster).
    A QLoRA model stays as it trained (4-bit base plus adapters): merging would mean quantizing
    it again."""
    qlora = state.lora is not None and state.lora['quantize']
    if state.lora and not qlora:
        from lora import merge_lora
        merge_lora(model)
    if k.quantize and not qlora:
        from quant import quantize_model
        print(quantize_model(model, k.quantize))  # how much smaller the weights became
    model.eval()
    roads.input_major(model)  # the same weights, each column in one piece
    if k.quantize == 'int8':  # which of int8's roads, and why: the faster on 16 greedy tokens
        start = torch.zeros((1, 1), dtype=torch.long, device=model.wte.weight.device)
        print(roads.int8(model, k.int8_road, lambda: generate(model, start, 16, temperature=0)))
    return model


def load_model(run, data, k, configured=()):
    """The model of k.init_from as a run that only samples has it (LoRA merged, quantized as k
    asks, in eval mode), and its state: the one way a tool (look.py, bench.py) loads one."""
    model, state = build_model(run, data, k, configured)
    return inference_model(model, state, k), state


@torch.no_grad()
def full_val_loss(model, split, block_size, device, batch_size=64, ctx=nullcontext(),
                  token_bytes=None):
    """Loss over the whole split, and bits per byte if token_bytes (each id's UTF-8 length) is
    given: every target of split.eval_windows once (on instruction pairs: every response token)."""
    model.eval()
    n = len(split.ids)
    starts, lasts = split.eval_windows(block_size)
    nats, count, nbytes = 0.0, 0, 0
    for b in range(0, len(starts), batch_size):
        first = starts[b:b + batch_size, None]  # (B, 1): each window's first position
        last = lasts[b:b + batch_size, None]  # (B, 1): its last target's
        # (B, T+1); windows past the end repeat
        pos = np.minimum(first + np.arange(block_size + 1), n - 1)
        ids = torch.from_numpy(split.ids[pos].astype(np.int64))
        # (B, T): targets in the window
        scored = torch.from_numpy(first + 1 + np.arange(block_size) <= last)
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
    bpb = None
    if nbytes:
        bpb = nats / math.log(2) / nbytes
    return nats / max(count, 1), bpb, count


def evaluate(run, model, data, state, k):
    """The final whole-split evaluation: val loss, bits per byte, exact match on instruction pairs"""
    token_bytes = torch.tensor(data.tok.token_bytes)
    loss, bpb, count = full_val_loss(model, data.val, model.block_size, run.dev, k.batch_size, run.ctx, token_bytes)
    what = 'predictions'
    if data.val.mask is not None:
        what = 'response tokens'
    print(f"whole-split val loss {loss:.4f} ({count:,} {what}), val bpb {bpb:.4f}")
    if data.val.mask is not None:
        from instruct import exact_match
        score = exact_match(generate, model, data.val, data.tok, state.template['end'], data.meta.get('val_tasks'),
                            run.dev, run.ctx, k.kv_cache)
        print('exact match: ' + ', '.join(f"{task} {pct:.1f}%" for task, pct in score.items()))
    return loss, bpb


def main():
    k = SimpleNamespace(**knobs(globals()))  # the knobs: only main() reads them, every step takes k
    data = load_data(k.dataset)  # token ids, loss masks, the tokenizer
    for problem in problems(k, ROOT, CONFIGURED):  # checks.py: settings that can't work
        die(problem)
    # a run that writes out_dir holds it from the start: process 0 (of torchrun's) takes its lock
    writes = writes_out_dir(k) and int(os.environ.get('RANK', 0)) == 0
    with claimed(os.path.join(ROOT, k.out_dir) if writes else None):
        run = start_processes(k.device)  # machine.py: one process or torchrun's, and the device
        model, state = build_model(run, data, k, CONFIGURED)  # scratch, resume, or one to fine-tune
        trains = will_train(k)  # max_iters=0 (or eval_only) with a loaded model: only what follows
        choose_roads(run, model, data, state, trains, k)  # the precisions: as asked, or timed here
        if trains and state.lora and state.ckpt is None and run.master:  # a new LoRA run's base kept
            from lora import keep_base
            keep_base(state.base, os.path.join(ROOT, k.out_dir))
        if trains:
            optimizers = make_optimizers(run, model, state, k)
            restore_randomness(run, state)
            train(run, model, optimizers, data, state, k)
        elif exporting(k):  # max_iters=0 from a checkpoint, asked to write it out
            export_checkpoint(run, model, data, state, k, CONFIGURED)
        finish_processes(run)
        if not run.master:
            return
        if trains:
            best_model(model, data, state, k)
        model = inference_model(model, state, k)
        if trains or k.eval_only:
            loss, bpb = evaluate(run, model, data, state, k)
        if trains:
            write_csv(run, state, 'final', val_loss=loss, val_bpb=bpb)
    if not k.eval_only and k.max_new_tokens > 0:  # eval_only stops at the whole-split loss
        sample(run, model, data, state, k)


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C after training, while sampling
        sys.exit(130)
