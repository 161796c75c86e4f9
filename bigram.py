"""
A bigram language model: each character predicts the next from a table of logits.
It is the baseline for gpt.py, which shares all of this file's scaffolding.

    python prepare.py          # once: writes data/shakespeare_char/
    python bigram.py           # trains ~3000 steps, prints losses and a sample
    python bigram.py --init_from=resume --max_iters=0   # only sample from out-bigram/ckpt.pt
"""
import json
import math
import os
import pickle
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import configure, knobs

# -----------------------------------------------------------------------------
dataset = 'shakespeare_char'  # reads data/<dataset>/ (made by prepare.py)
out_dir = 'out-bigram'  # checkpoint at <out_dir>/ckpt.pt; relative to this file's folder
init_from = 'scratch'  # 'scratch' or 'resume' (from <out_dir>/ckpt.pt)
device = 'auto'  # 'auto' picks cuda, then mps, then cpu
seed = 1337
batch_size = 32  # sequences per step
block_size = 8  # context length of a training sequence
max_iters = 3000  # optimizer steps
eval_interval = 300  # estimate the loss every this many steps
eval_iters = 200  # batches per loss estimate
learning_rate = 1e-2
prompt = '\n'  # sampling starts from this text
num_samples = 1
max_new_tokens = 500
temperature = 1.0  # 0 means greedy
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
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device):
    """Mean loss over the same eval_iters random batches of each split at every eval."""
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(0)
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            ix = torch.randint(len(data) - block_size, (batch_size,), generator=g)
            losses[k] = model(*get_batch(data, ix, block_size, device))[1].item()
        out[name] = losses.mean().item()
    model.train()
    return out


@torch.no_grad()
def full_val_loss(model, data, block_size, device, batch_size=64):
    """Loss over the whole split: consecutive windows, so every token but the first is predicted once."""
    model.eval()
    starts = torch.arange(0, len(data) - 1, block_size)
    total = 0.0
    for b in range(0, len(starts), batch_size):
        ix = starts[b:b + batch_size]
        full, last = ix[ix + block_size < len(data)], ix[ix + block_size >= len(data)]
        for part, t in ((full, block_size), (last, len(data) - 1 - int(last[0]) if len(last) else 0)):
            if len(part):
                loss = model(*get_batch(data, part, t, device))[1]
                total += loss.item() * len(part) * t
    model.train()
    return total / (len(data) - 1)


class BigramLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)  # row i: logits of the char after i

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # a bigram needs only the last character
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, generator)), dim=1)
        return idx


def sample_next(logits, temperature, generator=None):
    """One token per row from (B, vocab) logits; temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)


def save_checkpoint(path, ckpt):
    """Write to a temp file, fsync, then rename: a crash leaves the old checkpoint or the new one."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, model_type, chars):
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
    if ckpt['chars'] != chars:
        die(f"{path} was trained on another vocabulary ({len(ckpt['chars'])} chars) "
            f"than dataset '{dataset}' ({len(chars)} chars)")
    return ckpt


def check_config(n_train, n_val):
    """One clear line for each setting that cannot work, before anything is built or written."""
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


def main():
    dev = pick_device(device)
    print(f"device: {dev}")
    train_data, val_data, chars = load_data(dataset)
    check_config(len(train_data), len(val_data))
    stoi = {c: i for i, c in enumerate(chars)}
    config = knobs(globals())
    ckpt_path = os.path.join(ROOT, out_dir, 'ckpt.pt')
    torch.manual_seed(seed)
    data_rng = torch.Generator().manual_seed(seed)  # draws the training batches; saved for resume

    model = BigramLanguageModel(len(chars)).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    iter_num, best_val_loss = 0, math.inf
    if init_from == 'resume':
        ckpt = load_checkpoint(ckpt_path, 'bigram', chars)
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
        torch.set_rng_state(ckpt['rng']['torch'])
        data_rng.set_state(ckpt['rng']['data'])
        print(f"resumed from {ckpt_path} at step {iter_num}")
    missing = sorted(set(prompt) - set(stoi))
    if missing:
        die(f"the prompt has characters that are not in the vocabulary: {missing}")

    def checkpoint():
        os.makedirs(os.path.dirname(ckpt_path), exist_ok=True)
        save_checkpoint(ckpt_path, {
            'model_type': 'bigram', 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'model_args': {'vocab_size': len(chars)}, 'iter_num': iter_num, 'best_val_loss': best_val_loss,
            'config': config, 'chars': chars,
            'rng': {'torch': torch.get_rng_state(), 'data': data_rng.get_state()}})

    if init_from == 'scratch' and os.path.exists(ckpt_path):
        print(f"note: this run will overwrite {ckpt_path} (resume it with --init_from=resume)")

    # Ctrl-C or SIGTERM: finish the current step, save it, say how to resume, exit non-zero
    stop = {'signal': 0}
    def on_signal(signum, frame):
        stop['signal'] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)

    start_iter, t0 = iter_num, time.time()
    while True:
        last_step = iter_num >= max_iters
        if stop['signal']:
            if iter_num > start_iter:
                checkpoint()
            print(f"{signal.Signals(stop['signal']).name} at step {iter_num}: saved {ckpt_path}; "
                  f"continue with the same command and --init_from=resume")
            sys.exit(128 + stop['signal'])
        if (iter_num % eval_interval == 0 or last_step) and not (init_from == 'resume' and iter_num == start_iter):
            losses = estimate_loss(model, {'train': train_data, 'val': val_data},
                                   batch_size, block_size, eval_iters, dev)
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > 0:
                checkpoint()
        if last_step:
            break
        ix = torch.randint(len(train_data) - block_size, (batch_size,), generator=data_rng)
        _, loss = model(*get_batch(train_data, ix, block_size, dev))
        if not math.isfinite(loss.item()):
            die(f"the loss is not finite at step {iter_num}; stopped, and {ckpt_path} keeps the last good "
                f"state. Try a lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        iter_num += 1

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    if iter_num > start_iter:
        print(f"trained {iter_num - start_iter} steps in {time.time() - t0:.1f}s; saved {ckpt_path}")
        print(f"whole-split val loss {full_val_loss(model, val_data, block_size, dev):.4f} "
              f"({len(val_data) - 1:,} predictions)")
    model.eval()
    g = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([[stoi[c] for c in prompt]] * num_samples, dtype=torch.long, device=dev)
    for row in model.generate(idx, max_new_tokens, temperature, g).tolist():
        print(''.join(chars[i] for i in row))
        print('---------------')


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C after training, while sampling
        sys.exit(130)
