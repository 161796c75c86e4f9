"""
A bigram language model: each token predicts the next from a table of logits.
It is the baseline for gpt.py, which shares all of this file's scaffolding and its steps.

    python prepare.py          # once: writes data/shakespeare_char/
    python bigram.py           # trains ~3000 steps, prints losses and a sample
    python bigram.py --init_from=resume --max_iters=0   # only sample from out-bigram/ckpt.pt
    python bigram.py --dataset=shakespeare_bpe          # on BPE tokens (python prepare.py --tokenizer=bpe)

main() at the bottom reads as the steps of a run: device -> data -> model -> optimizer -> train
-> final evaluation -> sample.
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
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from configurator import configure, knobs
from tokenizer import from_description

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


class Split:
    """One split's token ids (memory-mapped) and, for instruction pairs, the loss mask: mask[j] is 1 where
    token j is part of a response (or its end marker), so only those tokens are ever predicted and scored."""

    def __init__(self, ids, mask=None):
        self.ids, self.mask = ids, mask
        if mask is not None:  # a pair starts where a response ended (mask 1 -> 0), and at 0
            m = np.asarray(mask)
            self.starts = np.concatenate([[0], np.flatnonzero((m[:-1] == 1) & (m[1:] == 0)) + 1])

    def __len__(self):
        return len(self.ids)

    def pair_windows(self, block_size):
        """For each pair, where its window starts and the position of its last token. A window starts at the
        pair's start, so it begins with the prompt; a pair longer than a window starts later, so that the
        window still ends with the whole response."""
        last = np.append(self.starts[1:], len(self.ids)) - 1
        return np.maximum(self.starts, last - block_size), last

    def random_starts(self, shape, block_size, generator):
        """Where training and eval windows start. Plain text: anywhere. Pairs: at a pair's window, so that
        every window holds response tokens to learn from."""
        if self.mask is None:
            return torch.randint(len(self.ids) - block_size, shape, generator=generator)
        starts = self.pair_windows(block_size)[0]
        starts = torch.from_numpy(starts[starts + block_size < len(self.ids)])
        return starts[torch.randint(len(starts), shape, generator=generator)]


def load_data(dataset):
    """The train and val splits, the tokenizer, and meta.json (made by prepare.py)."""
    folder = os.path.join(ROOT, 'data', dataset)
    try:
        with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
        splits = {}
        for name in ('train', 'val'):
            ids = np.memmap(os.path.join(folder, f'{name}.bin'), dtype=np.uint16, mode='r')
            mask = np.memmap(os.path.join(folder, f'{name}_mask.bin'), dtype=np.uint8, mode='r') \
                if meta.get('format', 'text') != 'text' else None
            splits[name] = Split(ids, mask)
    except (OSError, ValueError) as e:
        die(f"dataset '{dataset}' is not prepared in {folder} ({type(e).__name__}); run: python prepare.py")
    try:  # meta.json from before tokenizer.py held only 'chars'
        tok = from_description(meta['tokenizer'] if 'tokenizer' in meta else {'type': 'char', 'chars': meta.get('chars')})
    except ValueError as e:
        die(f"{folder}/meta.json has a malformed tokenizer ({e}); rerun prepare.py for this dataset")
    for name, split in splits.items():  # files from another preparation than meta.json's
        top = int(np.max(split.ids, initial=0))
        if top >= tok.vocab_size or (split.mask is not None and len(split.mask) != len(split)):
            die(f"{folder}/{name}.bin does not match its meta.json (ids up to {top} for {tok.vocab_size} tokens, "
                f"or a mask of another length); rerun prepare.py for this dataset")
    return SimpleNamespace(train=splits['train'], val=splits['val'], tok=tok, meta=meta)


def get_batch(split, ix, block_size, device):
    """Inputs ids[i:i+block_size] for each start i in ix, and targets shifted by one. Targets that the
    loss mask leaves out (a prompt's tokens) become -1, which cross_entropy ignores."""
    pos = ix.numpy()[:, None] + np.arange(block_size + 1)
    rows = torch.from_numpy(split.ids[pos].astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]  # (B, T) each
    if split.mask is not None:
        y = y.masked_fill(torch.from_numpy(split.mask[pos[:, 1:]] == 0), -1)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, splits, batch_size, block_size, eval_iters, device, ctx=nullcontext()):
    """Mean loss over the same eval_iters random batches of each split at every eval (over response
    tokens only, for instruction pairs)."""
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


@torch.no_grad()
def full_val_loss(model, split, block_size, device, batch_size=64, ctx=nullcontext(), token_bytes=None):
    """Loss over the whole split, and bits per byte if token_bytes (each id's UTF-8 length) is given.
    Plain text: consecutive windows, so every token but the first is predicted once. Instruction pairs:
    one window for each pair, scoring that pair's response tokens."""
    model.eval()
    n = len(split)
    if split.mask is None:
        starts = np.arange(0, n - 1, block_size)
        last = np.minimum(starts + block_size, n - 1)  # the last target of each window
    else:
        starts, last = split.pair_windows(block_size)
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


class BigramLanguageModel(nn.Module):

    def __init__(self, vocab_size):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)  # row i: logits of the token after i

    def forward(self, idx, targets=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None):
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])  # a bigram needs only the last token
            idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, generator)), dim=1)
        return idx


def sample_next(logits, temperature, generator=None):
    """One token per row from (B, vocab) logits; temperature 0 takes the most likely."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)


def save_checkpoint(path, ckpt):
    """Write to a temp file, fsync, then rename: a crash leaves the old checkpoint or the new one. A write
    that fails (a full disk) removes the temp file and stops in one line; the old checkpoint stays."""
    tmp = path + '.tmp'
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        kept = f"{path} keeps the last good state" if os.path.exists(path) else "no checkpoint was written"
        die(f"could not save {path} ({e.strerror or e}); nothing partial is left, and {kept}")


def tokenizer_of(ckpt):
    return ckpt['tokenizer'] if 'tokenizer' in ckpt else {'type': 'char', 'chars': ckpt.get('chars')}  # older files


def load_checkpoint(path, model_type, tok=None):
    """A checkpoint as plain data (weights_only: no pickled code runs), checked against the dataset's tokenizer."""
    if not os.path.isfile(path):
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
    if not isinstance(ckpt, dict) or ckpt.get('model_type') != model_type or 'model_args' not in ckpt:
        die(f"{path} is not a {model_type} checkpoint")
    theirs = tokenizer_of(ckpt)
    if tok is not None and theirs != tok.describe():
        name = lambda d: f"{d.get('type')}, {len(d.get('chars') or d.get('merges') or [])} {'chars' if d.get('type') == 'char' else 'merges'}"
        die(f"{path} was trained on another vocabulary ({name(theirs)}) than dataset '{dataset}' "
            f"({name(tok.describe())}); encode your text with its tokenizer: python prepare.py --input=FILE "
            f"--dataset=NAME --tokenizer_from={ckpt.get('config', {}).get('dataset', 'ITS_DATASET')}")
    return ckpt


def check_config(data):
    """One clear line for each setting that cannot work, before anything is built or written."""
    n_train, n_val = len(data.train), len(data.val)
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
    missing = data.tok.unknown(prompt)
    if missing:
        not_utf8 = any('\ud800' <= c <= '\udfff' for c in missing)  # how Python keeps bytes that were not UTF-8
        die(f"the prompt has characters that are not in the vocabulary: {missing}"
            + (" ('\\udcXX' is a byte that is not UTF-8: check the terminal's encoding)" if not_utf8 else ''))


# ----------------------------------------------------------------------------- the steps of a run
def build_model(dev, data):
    """The model: fresh ('scratch') or the run in out_dir ('resume'), with the state the later steps share."""
    state = SimpleNamespace(iter_num=0, best_val_loss=math.inf, ckpt=None, tokenizer=data.tok.describe(),
                            ckpt_path=os.path.join(ROOT, out_dir, 'ckpt.pt'), config=knobs(globals()),
                            data_rng=torch.Generator().manual_seed(seed))  # draws the training batches
    torch.manual_seed(seed)
    model = BigramLanguageModel(data.tok.vocab_size)
    if init_from == 'resume':
        state.ckpt = load_checkpoint(state.ckpt_path, 'bigram', data.tok)
        model.load_state_dict(state.ckpt['model'])
        state.iter_num, state.best_val_loss = state.ckpt['iter_num'], state.ckpt['best_val_loss']
    return model.to(dev), state


def make_optimizer(model, state):
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    if state.ckpt is not None:
        optimizer.load_state_dict(state.ckpt['optimizer'])
        torch.set_rng_state(state.ckpt['rng']['torch'])
        state.data_rng.set_state(state.ckpt['rng']['data'])
        print(f"resumed from {state.ckpt_path} at step {state.iter_num}")
    elif os.path.exists(state.ckpt_path):
        print(f"note: this run will overwrite {state.ckpt_path} (resume it with --init_from=resume)")
    return optimizer


def save(model, optimizer, state):
    save_checkpoint(state.ckpt_path, {
        'model_type': 'bigram', 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
        'model_args': {'vocab_size': model.token_embedding_table.num_embeddings}, 'iter_num': state.iter_num,
        'best_val_loss': state.best_val_loss, 'config': state.config, 'tokenizer': state.tokenizer,
        'rng': {'torch': torch.get_rng_state(), 'data': state.data_rng.get_state()}})


def train(dev, model, optimizer, data, state):
    """Train until max_iters or a signal; evaluate and save every eval_interval steps."""
    caught = {'signal': 0}  # Ctrl-C or SIGTERM: finish the current step, save it, say how to resume, exit
    before = {s: signal.signal(s, lambda signum, frame: caught.update(signal=signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    start_iter, t0 = state.iter_num, time.time()
    while True:
        last_step = state.iter_num >= max_iters
        if caught['signal']:
            if state.iter_num > start_iter:
                save(model, optimizer, state)
            print(f"{signal.Signals(caught['signal']).name} at step {state.iter_num}: saved {state.ckpt_path}; "
                  f"continue with the same command and --init_from=resume")
            sys.exit(128 + caught['signal'])
        if (state.iter_num % eval_interval == 0 or last_step) and not (init_from == 'resume' and state.iter_num == start_iter):
            losses = estimate_loss(model, {'train': data.train, 'val': data.val}, batch_size, block_size, eval_iters, dev)
            print(f"step {state.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            state.best_val_loss = min(state.best_val_loss, losses['val'])
            if state.iter_num > 0:
                save(model, optimizer, state)
        if last_step:
            break
        ix = data.train.random_starts((batch_size,), block_size, state.data_rng)
        _, loss = model(*get_batch(data.train, ix, block_size, dev))
        if not math.isfinite(loss.item()):
            die(f"the loss is not finite at step {state.iter_num}; stopped, and {state.ckpt_path} keeps the last good "
                f"state. Try a lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.iter_num += 1
    for s, handler in before.items():  # Ctrl-C while sampling raises KeyboardInterrupt again, as before training
        signal.signal(s, handler)
    if state.iter_num > start_iter:
        print(f"trained {state.iter_num - start_iter} steps in {time.time() - t0:.1f}s; saved {state.ckpt_path}")
    return state.iter_num > start_iter


def evaluate(dev, model, data):
    """The final whole-split evaluation: val loss and bits per byte."""
    token_bytes = torch.tensor(data.tok.token_bytes)
    loss, bpb, count = full_val_loss(model, data.val, block_size, dev, token_bytes=token_bytes)
    print(f"whole-split val loss {loss:.4f} ({count:,} predictions), val bpb {bpb:.4f}")


def sample(dev, model, data):
    model.eval()
    g = torch.Generator(device=dev).manual_seed(seed)
    idx = torch.tensor([data.tok.encode(prompt)] * num_samples, dtype=torch.long, device=dev)
    for row in model.generate(idx, max_new_tokens, temperature, g).tolist():
        print(data.tok.decode(row))
        print('---------------')


def main():
    dev = pick_device(device)
    print(f"device: {dev}")
    data = load_data(dataset)  # token ids, the tokenizer
    check_config(data)
    model, state = build_model(dev, data)  # scratch or resume
    trained = False
    if state.iter_num < max_iters:
        optimizer = make_optimizer(model, state)
        trained = train(dev, model, optimizer, data, state)
    if trained:
        evaluate(dev, model, data)
    sample(dev, model, data)  # sample-only (init_from=resume, max_iters=0): model, then sample


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C after training, while sampling
        sys.exit(130)
