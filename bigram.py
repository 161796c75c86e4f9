"""
A bigram language model: each token predicts the next from a table of logits. The
baseline for gpt.py, which has the same sections, helper names and steps (main()), grown
for a GPT run (README: the lecture's path).

    python prepare.py          # once: writes data/shakespeare_char/
    python bigram.py           # trains 3000 steps in a few seconds, prints losses and a sample
    python bigram.py --init_from=resume --max_iters=0   # only sample from out-bigram/ckpt.pt
"""
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from checkpoint import claimed, load_checkpoint, save_checkpoint
from checks import die, prompt_problem
from configurator import configure, knobs
from machine import pick_device
from prepare import load_prepared

# -----------------------------------------------------------------------------
dataset = 'shakespeare_char'  # reads data/<dataset>/ (made by prepare.py)
out_dir = 'out-bigram'  # checkpoint at <out_dir>/ckpt.pt; relative to this file's folder
init_from = 'scratch'  # 'scratch' or 'resume' (from <out_dir>/ckpt.pt)
device = 'auto'  # 'auto' picks cuda, then mps, then cpu
seed = 1337  # seeds the init, the batches and sampling: the same seed, the same run
batch_size = 32  # sequences per step
block_size = 8  # context length of a training sequence
max_iters = 3000  # optimizer steps
eval_interval = 300  # estimate the loss every this many steps
eval_iters = 200  # batches per loss estimate
learning_rate = 1e-2  # AdamW's rate, constant (the lecture's)
prompt = '\n'  # sampling starts from this text
num_samples = 1  # samples drawn after training
max_new_tokens = 500
temperature = 1.0  # 0 means greedy
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------ data
class Split:
    """One split's token ids, memory-mapped."""

    def __init__(self, ids):
        self.ids = ids

    def random_starts(self, shape, block_size, generator):
        """Where training and eval windows start: anywhere in the text."""
        return torch.randint(len(self.ids) - block_size, shape, generator=generator)


def load_data(dataset):
    """The train and val splits, the tokenizer, and meta.json (prepare.py
    wrote them, and reads them back)."""
    meta, tok, ids, masks = load_prepared(ROOT, dataset)
    if masks:
        die(f"dataset '{dataset}' holds instruction pairs: a bigram has no prompt to follow; train gpt.py on it")
    return SimpleNamespace(train=Split(ids['train']), val=Split(ids['val']), tok=tok, meta=meta)


def get_batch(split, ix, block_size, device):
    """Inputs ids[i:i+block_size] for each start i in ix, and targets shifted by one."""
    pos = ix.numpy()[:, None] + np.arange(block_size + 1)
    rows = torch.from_numpy(split.ids[pos].astype(np.int64)).to(device)
    return rows[:, :-1], rows[:, 1:]  # (B, T) each


# ------------------------------------------------------------------- the model
class BigramLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        # row i: logits of the token after i
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None):
        for _ in range(max_new_tokens):
            # (B, vocab_size): a bigram needs only the last token
            logits = self(idx[:, -1:])[0][:, -1, :]
            # <= 0: a tiny temperature can't overflow
            logits = logits - logits.amax(dim=-1, keepdim=True)
            if temperature == 0:  # greedy
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


# -------------------------------------------------------------------- sampling
def sample(dev, model, data):
    """num_samples continuations of the prompt."""
    g = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([data.tok.encode(prompt)] * num_samples, dtype=torch.long, device=dev)
    for row in model.generate(idx, max_new_tokens, temperature, g).tolist():
        print(data.tok.decode(row))
        print('---------------')


# ----------------------------------------------------------------- checkpoints
def save(model, optimizer, state):
    """The model, optimizer and data order, as plain data; written atomically (checkpoint.py)."""
    save_checkpoint(state.ckpt_path, {
        'model_type': 'bigram', 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
        'model_args': {'vocab_size': model.token_embedding_table.num_embeddings}, 'iter_num': state.iter_num,
        'best_val_loss': state.best_val_loss, 'config': state.config, 'tokenizer': state.tokenizer,
        'rng': {'data': state.data_rng.get_state()}})  # a bigram has no dropout: only the batches draw
    state.saved = state.iter_num


# ---------------------------------------------------------- the steps of a run
def check_config(data):
    """One clear line for each setting that cannot work, before anything is built or written."""
    n_train, n_val = len(data.train.ids), len(data.val.ids)
    problems = [
        (init_from in ('scratch', 'resume'), f"init_from must be 'scratch' or 'resume', not '{init_from}'"),
        (min(batch_size, block_size, eval_interval, eval_iters, num_samples) > 0,
         "batch_size, block_size, eval_interval, eval_iters and num_samples must be positive"),
        (block_size < min(n_train, n_val), f"block_size ({block_size}) must be shorter than both splits "
                                           f"({n_train:,} and {n_val:,} tokens)"),
        (min(max_iters, max_new_tokens) >= 0, "max_iters and max_new_tokens must not be negative"),
        (learning_rate > 0, f"learning_rate must be positive, not {learning_rate}"),
        (temperature >= 0, f"temperature must be >= 0 (0 is greedy), not {temperature}"),
        (prompt != '', "prompt must not be empty (the default is a newline)"),
    ]
    for ok, msg in problems:
        if not ok:
            die(msg)
    # a bigram reads only the prompt's last token
    problem = prompt_problem(data.tok, prompt, math.inf)
    if problem:
        die(problem)


def build_model(dev, data):
    """The model: fresh ('scratch') or the run in out_dir ('resume'), with
    the state the later steps share."""
    state = SimpleNamespace(iter_num=0, best_val_loss=math.inf, ckpt=None, saved=None,
                            tokenizer=data.tok.describe(),
                            ckpt_path=os.path.join(ROOT, out_dir, 'ckpt.pt'), config=knobs(globals()),
                            data_rng=torch.Generator().manual_seed(seed))  # draws the training batches
    torch.manual_seed(seed)
    model = BigramLanguageModel(data.tok.vocab_size)
    if init_from == 'resume':
        state.ckpt = load_checkpoint(state.ckpt_path, 'bigram', data.tok, dataset)
        model.load_state_dict(state.ckpt['model'])
        state.iter_num, state.best_val_loss = state.ckpt['iter_num'], state.ckpt['best_val_loss']
        state.saved = state.iter_num
    return model.to(dev), state


def make_optimizer(model, state):
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    if state.ckpt is not None:
        optimizer.load_state_dict(state.ckpt['optimizer'])
        state.data_rng.set_state(state.ckpt['rng']['data'])
        print(f"resumed from {state.ckpt_path} at step {state.iter_num}")
    elif os.path.exists(state.ckpt_path):
        print(f"note: this run will overwrite {state.ckpt_path} (resume it with --init_from=resume)")
    return optimizer


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device):
    """Mean loss over the same eval_iters random batches of each split at every eval."""
    out = {}
    for name, split in splits.items():
        g = torch.Generator().manual_seed(0)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            ix = split.random_starts((batch_size,), block_size, g)
            losses[k] = model(*get_batch(split, ix, block_size, device))[1].item()
        out[name] = losses.mean().item()
    return out


def train(dev, model, optimizer, data, state):
    """Train until max_iters; evaluate and save every eval_interval steps."""
    start_iter, t0 = state.iter_num, time.time()
    while True:
        last_step = state.iter_num >= max_iters
        # that step was evaluated already
        resumed_here = init_from == 'resume' and state.iter_num == start_iter
        if (state.iter_num % eval_interval == 0 or last_step) and not resumed_here:
            splits = {'train': data.train, 'val': data.val}
            losses = estimate_loss(model, splits, batch_size, block_size, eval_iters, dev)
            print(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            state.best_val_loss = min(state.best_val_loss, losses['val'])
            if state.iter_num > 0:
                save(model, optimizer, state)
        if last_step:
            break
        ix = data.train.random_starts((batch_size,), block_size, state.data_rng)
        _, loss = model(*get_batch(data.train, ix, block_size, dev))
        if not math.isfinite(loss.item()):
            last_save = "none was saved"
            if state.saved is not None:
                last_save = f"{state.ckpt_path} keeps step {state.saved}"
            die(f"the loss is not finite at step {state.iter_num}; stopped, and {last_save}. "
                f"Try a lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.iter_num += 1
    if state.iter_num > start_iter:
        steps = state.iter_num - start_iter
        print(f"trained {steps} steps in {time.time() - t0:.1f}s; saved {state.ckpt_path}")
    return state.iter_num > start_iter


@torch.no_grad()
def full_val_loss(model, split, block_size, device, batch_size=64, token_bytes=None):
    """Loss over the whole split, and bits per byte if token_bytes (each id's UTF-8
    length) is given: every token but the first is predicted once. A bigram looks
    one token back, so any window does."""
    ids, nats = torch.from_numpy(split.ids.astype(np.int64)), 0.0
    for b in range(0, len(ids) - 1, block_size * batch_size):
        chunk = ids[b:b + block_size * batch_size + 1].to(device)
        nats += model(chunk[None, :-1], chunk[None, 1:])[1].item() * (len(chunk) - 1)
    nbytes = token_bytes[ids[1:]].sum().item() if token_bytes is not None else 0
    return nats / (len(ids) - 1), (nats / math.log(2) / nbytes if nbytes else None), len(ids) - 1


def evaluate(dev, model, data):
    """The final whole-split evaluation: val loss and bits per byte."""
    token_bytes = torch.tensor(data.tok.token_bytes)
    loss, bpb, count = full_val_loss(model, data.val, block_size, dev, token_bytes=token_bytes)
    print(f"whole-split val loss {loss:.4f} ({count:,} predictions), val bpb {bpb:.4f}")


def main():
    dev = pick_device(device)
    print(f"device: {dev}")
    data = load_data(dataset)  # token ids, the tokenizer
    check_config(data)
    model, state = build_model(dev, data)  # scratch or resume
    trains = state.iter_num < max_iters
    with claimed(os.path.join(ROOT, out_dir) if trains else None):  # a training run holds out_dir
        if trains and train(dev, model, make_optimizer(model, state), data, state):
            evaluate(dev, model, data)  # after training: the whole-split val loss and bits per byte
    sample(dev, model, data)  # sample-only (init_from=resume, max_iters=0): model, then sample


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    # Ctrl-C: training saved at its last eval (resume with --init_from=resume)
    except KeyboardInterrupt:
        sys.exit(130)
