"""
Make a dataset for bigram.py and gpt.py: token ids for a train and a val split, and the tokenizer.

    python prepare.py                            # download Tiny Shakespeare -> data/shakespeare_char/
    python prepare.py --input=path/to/input.txt  # any local UTF-8 text (offline use)
    python prepare.py --tokenizer=bpe            # byte-level BPE -> data/shakespeare_bpe/
    python prepare.py --format=tasks --tokenizer_from=shakespeare_char  # -> data/shakespeare_tasks/
    # your own text, or prompt/response pairs, encoded with a model's tokenizer
    python prepare.py --input=my.txt --dataset=mine --tokenizer_from=shakespeare_char
    python prepare.py --input=pairs.jsonl --format=pairs --dataset=sft --tokenizer_from=shakespeare_char

Writes data/<dataset>/train.bin and val.bin (token ids as uint16: the first 90% of the text and the
last 10%, cut before tokenizing) and meta.json (the tokenizer, as JSON). Instruction pairs also get
train_mask.bin and val_mask.bin (uint8: 1 where a token belongs to a response).
"""
import hashlib
import json
import os
import random
import sys

import numpy as np

from checkpoint import write_atomic
from checks import die
from configurator import configure
from tokenizer import BPETokenizer, CharTokenizer, description_in, from_description

# -----------------------------------------------------------------------------
input = ''  # a local UTF-8 text file (JSONL with format='pairs'); empty means download `url`
dataset = ''  # writes data/<dataset>/; '': shakespeare_char, shakespeare_bpe or shakespeare_tasks
tokenizer = 'char'  # 'char': a token per character; 'bpe': byte-level BPE, trained on the train split
vocab_size = 1024  # bpe only: the 256 bytes plus vocab_size - 256 merges
tokenizer_from = ''  # a prepared dataset (or gpt2) whose tokenizer encodes this text, for its model
format = 'text'  # 'text'; 'pairs': JSONL of {"prompt": ..., "response": ...}; 'tasks': made from lines
url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
sha256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'  # of `url`; '' skips the check
timeout = 30.0  # seconds to wait for the server
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))
SEP, END = '\n', '\n\n'  # an instruction pair is rendered as prompt + SEP + response + END


def download(url, path, sha256, timeout):
    """Fetch url into path unless a copy with the right checksum is already there."""
    if os.path.exists(path) and sha256:
        with open(path, 'rb') as f:
            if hashlib.sha256(f.read()).hexdigest() == sha256:
                print(f"{path} is already there")
                return
    import requests
    hint = "to work offline, use a local copy: python prepare.py --input=path/to/input.txt"
    print(f"downloading {url}")
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
    except requests.Timeout:
        die(f"download failed: no answer within {timeout:g} s (Timeout); {hint}")
    except requests.HTTPError as e:
        die(f"download failed: HTTP {e.response.status_code} (HTTPError); {hint}")
    except requests.RequestException as e:
        die(f"download failed: could not reach {url} ({type(e).__name__}); {hint}")
    if sha256 and hashlib.sha256(r.content).hexdigest() != sha256:
        die(f"download from {url} has the wrong sha256 ({len(r.content)} bytes), not saved; {hint}")
    write_atomic({path: r.content})


def read_text(path):
    """The file's text, refusing what is not a non-empty UTF-8 text file."""
    if not os.path.isfile(path):
        die(f"input file '{path}' not found")
    with open(path, 'rb') as f:
        raw = f.read()
    if not raw:
        die(f"input file '{path}' is empty")
    if b'\x00' in raw:
        die(f"input file '{path}' looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        byte = raw[e.start]
        die(f"input file '{path}' is not valid UTF-8 (byte {byte:#04x} at offset {e.start})")


def read_pairs(text, path):
    """[(prompt, response)] from JSONL, one {"prompt": str, "response": str} object per line."""
    pairs = []
    # not splitlines(): U+2028 and the like may sit in a string
    for n, line in enumerate(text.split('\n'), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            die(f"{path} line {n}: not valid JSON ({e.msg})")
        strings = isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in ('prompt', 'response'))
        if not strings:
            die(f"{path} line {n}: needs string values for both \"prompt\" and \"response\"")
        if END in obj['prompt'] + SEP + obj['response']:
            die(f"{path} line {n}: a pair must not hold a blank line "
                f"({END!r} marks the end of a response)")
        if obj['response'].endswith(SEP):  # its end marker would be found one character early
            die(f"{path} line {n}: a response must not end with a newline "
                f"({END!r} after it marks its end)")
        pairs.append((obj['prompt'], obj['response']))
    return pairs


TASKS = {  # instructions a small model can learn; the instruction is part of the prompt
    'upper': lambda line: line.upper(),
    'first': lambda line: line.split()[0],
    'last': lambda line: line.split()[-1],
    'reverse': lambda line: ' '.join(line.split()[::-1]),
}


def make_tasks(text, n_lines=5000, seed=0):
    """Instruction pairs from the text's lines of 8 to 24 characters: every task on
    every line. The lines are shuffled once and split 90/10, so the val pairs ask
    about lines that training never saw."""
    lines = {' '.join(l.split()) for l in text.splitlines()}  # spaces made single
    lines = sorted(l for l in lines if 8 <= len(l) <= 24)
    random.Random(seed).shuffle(lines)
    lines = [l for l in lines if len(l.split()) >= 2][:n_lines]
    return [(f"{task}: {line}", fn(line), task) for line in lines for task, fn in TASKS.items()]


def encode_pairs(tok, pairs):
    """Ids and loss mask for the rendered pairs: mask 1 on the response and the end marker."""
    ids, mask = [], []
    for prompt, response in pairs:
        p, r = tok.encode(prompt + SEP), tok.encode(response + END)
        ids += p + r
        mask += [0] * len(p) + [1] * len(r)
    return ids, mask


def load_tokenizer(name):
    """A prepared dataset's tokenizer (data/<name>/meta.json), or GPT-2's: a hub
    name or a Hugging Face folder."""
    from gpt2 import HUB, gpt2_tokenizer  # only on this knob
    if name in HUB or os.path.isfile(os.path.join(name, 'vocab.json')):
        return gpt2_tokenizer(name)
    try:
        with open(os.path.join(ROOT, 'data', name, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
        return from_description(description_in(meta))
    except (OSError, ValueError, KeyError) as e:
        die(f"--tokenizer_from={name}: data/{name}/meta.json is missing or malformed ({e}); "
            f"prepare that dataset first")


def check_knobs():
    if tokenizer not in ('char', 'bpe'):
        die(f"--tokenizer must be 'char' or 'bpe', not '{tokenizer}'")
    if tokenizer == 'bpe' and not 256 <= vocab_size <= 65536:
        die(f"--vocab_size must be in [256, 65536] for bpe (256 = bytes only; ids are uint16), "
            f"not {vocab_size}")
    if format not in ('text', 'pairs', 'tasks'):
        die(f"--format must be 'text', 'pairs' or 'tasks', not '{format}'")
    if format == 'pairs' and not input:
        die("--format=pairs needs --input=FILE.jsonl")
    if tokenizer_from and not dataset and format != 'tasks':
        die("--tokenizer_from makes a new dataset: name it with --dataset=NAME")


def folder_for(tok):
    """data/<dataset>/: a plain folder name, and never one that holds another kind of data (the
    user's data is not swapped behind their back)."""
    name = dataset or {'tasks': 'shakespeare_tasks'}.get(format, f'shakespeare_{tokenizer}')
    if os.sep in name or name in ('.', '..'):
        die(f"--dataset must be a plain folder name, not '{name}'")
    out = os.path.join(ROOT, 'data', name)
    if os.path.exists(os.path.join(out, 'meta.json')):
        with open(os.path.join(out, 'meta.json'), encoding='utf-8') as f:
            before = json.load(f)
        was = (before.get('tokenizer', {}).get('type', 'char'), before.get('format', 'text'))
        now = (tok.describe()['type'] if tok else tokenizer, format)
        if was != now:
            die(f"data/{name} holds a {was[0]} {was[1]} dataset; give another --dataset, "
                f"or delete data/{name} first")
    return out


def command_for(name):
    """The command that makes data/<name>/, for the line that says a dataset is missing."""
    known = {'shakespeare_char': 'python prepare.py',
             'shakespeare_bpe': 'python prepare.py --tokenizer=bpe',
             'bpe2048': 'python prepare.py --tokenizer=bpe --vocab_size=2048 --dataset=bpe2048',
             'shakespeare_tasks': 'python prepare.py --format=tasks --tokenizer_from=shakespeare_char',
             'shakespeare_gpt2': 'python prepare.py --dataset=shakespeare_gpt2 --tokenizer_from=gpt2'}
    return known.get(name, f"python prepare.py --input=YOUR_TEXT --dataset={name}")


def load_prepared(root, dataset):
    """Read back what this file wrote to <root>/data/<dataset>/, checked: meta.json, its
    tokenizer, and each split's token ids (and, for pairs, loss mask) memory-mapped. Returns
    (meta, tok, ids, masks); ids and masks are dicts by split, masks empty for text. A missing
    or mismatched file: one line, and exit."""
    folder = os.path.join(root, 'data', dataset)
    ids, masks = {}, {}
    try:
        with open(os.path.join(folder, 'meta.json'), encoding='utf-8') as f:
            meta = json.load(f)
        for name in ('train', 'val'):
            ids[name] = np.memmap(os.path.join(folder, f'{name}.bin'), dtype=np.uint16, mode='r')
            if meta.get('format', 'text') != 'text':
                mask_path = os.path.join(folder, f'{name}_mask.bin')
                masks[name] = np.memmap(mask_path, dtype=np.uint8, mode='r')
    except (OSError, ValueError) as e:
        why = type(e).__name__
        die(f"dataset '{dataset}' is not prepared in {folder} ({why}); run: {command_for(dataset)}")
    try:
        tok = from_description(description_in(meta))
    except ValueError as e:
        die(f"{folder}/meta.json has a malformed tokenizer ({e}); prepare this dataset again")
    for name in ids:  # files from another preparation than meta.json's
        top = int(np.max(ids[name], initial=0))
        if top >= tok.vocab_size or (name in masks and len(masks[name]) != len(ids[name])):
            die(f"{folder}/{name}.bin does not match its meta.json (ids to {top}, "
                f"{tok.vocab_size} tokens, or a mask of another length); rerun prepare.py for this dataset")
    return meta, tok, ids, masks


def split_90_10(text, path):
    """The train and val parts: the text cut at 90% (the val text is then the same whatever the
    tokenizer), or the pairs cut by pair (by line for tasks: every task of a line on one side).
    Pairs also come back rendered as text, with the tasks of the val pairs."""
    if format == 'text':
        n = int(0.9 * len(text))
        if n == 0 or n == len(text):
            die(f"input file '{path}' has {len(text)} characters; too short to split 90/10")
        return (text[:n], text[n:]), None, None
    pairs = read_pairs(text, path) if format == 'pairs' else make_tasks(text)
    n = int(0.9 * len(pairs))
    n -= n % len(TASKS) if format == 'tasks' else 0
    if n == 0 or n == len(pairs):
        die(f"input file '{path}' has {len(pairs)} pairs; too few to split 90/10")
    tasks = [t for *_, t in pairs[n:]] if format == 'tasks' else None
    return (pairs[:n], pairs[n:]), [p + SEP + r + END for p, r, *_ in pairs], tasks


def make_tokenizer(tok, parts, rendered):
    """The tokenizer of --tokenizer_from, or a new one (char: every character of the text; bpe:
    trained on the train part). Text that it can't encode is refused."""
    text = ''.join(parts) if rendered is None else ''.join(rendered)
    if tok is None and tokenizer == 'char':
        tok = CharTokenizer.train(text)
    elif tok is None:
        train_text = parts[0]
        if rendered is not None:  # the train pairs, rendered
            train_text = ''.join(rendered[:len(parts[0])])
        tok = BPETokenizer.train(train_text, vocab_size)
    missing = tok.unknown(text)
    if missing:
        more = ''
        if len(missing) > 30:
            more = f" and {len(missing) - 30} more"
        die(f"the text has characters that the tokenizer of '{tokenizer_from}' lacks: {missing[:30]}"
            f"{more}; use a bpe dataset's tokenizer, or prepare a new char dataset without --tokenizer_from")
    if tok.vocab_size > 65536:
        die(f"the text has {tok.vocab_size} distinct characters; uint16 ids hold at most 65536")
    return tok


def encode(tok, parts, rendered, tasks):
    """The dataset's files as bytes: token ids (uint16; for pairs also uint8 loss masks
    and the pairs as JSONL), then meta.json."""
    files = {}
    for split, part in zip(('train', 'val'), parts):
        if rendered is None:
            files[f'{split}.bin'] = np.array(tok.encode(part), dtype=np.uint16).tobytes()
        else:
            ids, mask = encode_pairs(tok, [pair[:2] for pair in part])
            files[f'{split}.bin'] = np.array(ids, np.uint16).tobytes()
            files[f'{split}_mask.bin'] = np.array(mask, np.uint8).tobytes()
    val_text = parts[1] if rendered is None else ''.join(rendered[len(parts[0]):])
    meta = {'tokenizer': tok.describe(), 'vocab_size': tok.vocab_size, 'format': format,
            'val_bytes': len(val_text.encode('utf-8'))}
    if rendered is not None:
        meta.update(sep=SEP, end=END, val_tasks=tasks)
        files['pairs.jsonl'] = ''.join(json.dumps({'prompt': p, 'response': r}) + '\n'
                                       for p, r, *_ in parts[0] + parts[1]).encode()
    # written last: a dataset with meta.json is complete
    files['meta.json'] = json.dumps(meta).encode()
    return files, meta


def main():
    check_knobs()
    tok = load_tokenizer(tokenizer_from) if tokenizer_from else None
    out = folder_for(tok)
    path = input or os.path.join(out, 'input.txt')
    if not input:
        download(url, path, sha256, timeout)
    text = read_text(path)
    parts, rendered, tasks = split_90_10(text, path)
    tok = make_tokenizer(tok, parts, rendered)
    files, meta = encode(tok, parts, rendered, tasks)
    write_atomic({os.path.join(out, fname): content for fname, content in files.items()})
    if rendered is None:
        print(f"length of dataset in characters: {len(text):,}")
    else:
        n_pairs = len(parts[0]) + len(parts[1])
        print(f"{n_pairs:,} pairs: {len(parts[0]):,} train, {len(parts[1]):,} val"
              + (f" (tasks: {', '.join(TASKS)})" if tasks else ''))
    source = ''
    if tokenizer_from:
        source = f" from {tokenizer_from}"
    print(f"tokenizer: {tok.describe()['type']}{source}")
    print(f"vocab size: {tok.vocab_size:,}")
    n_train, n_val = len(files['train.bin']) // 2, len(files['val.bin']) // 2
    print(f"train has {n_train:,} tokens, val has {n_val:,} tokens "
          f"({meta['val_bytes'] / n_val:.2f} bytes per val token)")
    print(f"wrote {out}/{', '.join(files)}")


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    main()
