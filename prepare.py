"""
Make a character-level dataset for bigram.py and gpt.py.

    python prepare.py                                  # download Tiny Shakespeare
    python prepare.py --input=path/to/input.txt        # any local UTF-8 text (offline use)
    python prepare.py --input=my.txt --dataset=mine    # writes data/mine/ instead

Writes data/<dataset>/train.bin and val.bin (token ids as uint16: the first 90% of the
text and the last 10%) and meta.json (the vocabulary, as JSON).
"""
import hashlib
import json
import os
import sys

import numpy as np

from configurator import configure

# -----------------------------------------------------------------------------
input = ''  # a local UTF-8 text file; empty means download `url`
dataset = 'shakespeare_char'  # output folder: data/<dataset>/
url = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
sha256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'  # of `url`; '' skips the check
timeout = 30.0  # seconds to wait for the server
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))


def die(msg):
    sys.exit(f"prepare: {msg}")


def write_atomic(path, data):
    """Write bytes to path so that a crash leaves either the old file or the new one, never half."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    write_atomic(path, r.content)


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
        die(f"input file '{path}' is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})")


def encode(text):
    """The sorted vocabulary and the text as an array of indices into it."""
    codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)  # one code point per char
    vocab = np.unique(codes)
    if len(vocab) > 65536:
        die(f"the text has {len(vocab)} distinct characters; uint16 ids hold at most 65536")
    return [chr(c) for c in vocab], np.searchsorted(vocab, codes).astype(np.uint16)


def main():
    if not dataset or os.sep in dataset or dataset in ('.', '..'):
        die(f"--dataset must be a plain folder name, not '{dataset}'")
    out = os.path.join(ROOT, 'data', dataset)
    os.makedirs(out, exist_ok=True)
    path = input
    if not path:
        path = os.path.join(out, 'input.txt')
        download(url, path, sha256, timeout)
    text = read_text(path)
    chars, ids = encode(text)
    n = int(0.9 * len(ids))
    if n == 0 or n == len(ids):
        die(f"input file '{path}' has {len(ids)} characters; too short to split 90/10")
    write_atomic(os.path.join(out, 'train.bin'), ids[:n].tobytes())
    write_atomic(os.path.join(out, 'val.bin'), ids[n:].tobytes())
    meta = {'vocab_size': len(chars), 'chars': chars}
    write_atomic(os.path.join(out, 'meta.json'), json.dumps(meta).encode())
    print(f"length of dataset in characters: {len(text):,}")
    print(f"vocab size: {len(chars):,}")
    print(f"train has {n:,} tokens, val has {len(ids) - n:,} tokens")
    print(f"wrote {out}/train.bin, val.bin, meta.json")


if __name__ == '__main__':
    configure(globals(), sys.argv[1:])
    main()
