"""
A run's files, for bigram.py and gpt.py alike: the checkpoint written so that a crash or a full disk never
leaves half a file, read as plain data (no pickled code runs), and one run at a time in an out_dir.
It never imports bigram or gpt.
"""
import os
import pickle
import sys
import warnings
from contextlib import contextmanager

import torch

from tokenizer import description_in

try:
    import fcntl  # the out_dir lock; Windows has none, and runs without it
except ImportError:
    fcntl = None


def die(msg):
    sys.exit(f"error: {msg}")


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


def load_checkpoint(path, model_type, tok=None, dataset=None):
    """A checkpoint as plain data (weights_only: no pickled code runs), checked against the tokenizer of the
    dataset it is to be used on."""
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
        die(f"{path} is not a {model_type} checkpoint written by {model_type}.py")
    theirs = description_in(ckpt)
    if tok is not None and theirs != tok.describe():
        name = lambda d: f"{d.get('type')}, {len(d.get('chars') or d.get('merges') or [])} chars or merges"
        its = ckpt.get('config', {}).get('dataset', 'ITS_DATASET')
        die(f"{path} was trained on another vocabulary, dataset '{its}' ({name(theirs)}), than '{dataset}' "
            f"({name(tok.describe())}): add --dataset={its}, or encode your text with its tokenizer: "
            f"python prepare.py --input=FILE --dataset=NAME --tokenizer_from={its}")
    return ckpt


def read_model(name, root, tok=None, dataset=None, block_size=None):
    """A checkpoint (a ckpt.pt's path, from root), or GPT-2 as one (gpt2.py: a hub name, a Hugging Face folder
    or its model.safetensors; block_size crops its 1,024 positions), checked against the dataset's tokenizer;
    and the file it came from."""
    path = os.path.join(root, name)
    if os.path.isfile(path) and not path.endswith('.safetensors'):
        return load_checkpoint(path, 'gpt', tok, dataset), path
    if os.path.isfile(os.path.join(path, 'ckpt.pt')):
        die(f"{name} is a run's folder, not a model: give its checkpoint, --init_from={os.path.join(name, 'ckpt.pt')} "
            f"(or best.pt), or continue that run with --init_from=resume --out_dir={name}")
    from gpt2 import load_gpt2  # only for GPT-2: huggingface_hub and safetensors
    return load_gpt2(path if os.path.exists(path) else name, tok, dataset, block_size)


def full_weights(path, ckpt, tok, dataset, model_class, merge=True):
    """All of a gpt checkpoint's weights. A LoRA checkpoint holds only its adapters: its base's weights come
    from the base (a checkpoint, or GPT-2), once checked to be the very file they trained on, with the
    adapters merged into a model_class (merge=False: the base's alone, for a LoRA run to resume)."""
    if 'lora' not in ckpt:
        return ckpt['model']
    from lora import base_problem, merged_weights
    base, problem = ckpt['base'], base_problem(ckpt['base'])
    if problem:
        die(f"{path} is a LoRA checkpoint on the base {base['path']}, which {problem}")
    theirs = read_model(base['path'], '/', tok, dataset, ckpt['model_args']['block_size'])[0]
    weights = full_weights(base['path'], theirs, tok, dataset, model_class)
    return merged_weights(model_class(**ckpt['model_args']), weights, ckpt) if merge else weights


def claim_out_dir(folder):
    """One run writes an out_dir at a time: hold a lock on <folder>/run.lock, so that a second run there is
    refused in one line that names the first. The OS lets go of the lock when the process ends, however it
    ends (kill -9 too), so nothing stale is left to block the next run. Keep what this returns."""
    path = os.path.join(folder, 'run.lock')
    if fcntl is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
        lock = open(path, 'a+', encoding='utf-8', errors='backslashreplace')  # argv may hold bytes that aren't UTF-8
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        die(f"{folder} is in use by {lock.read().strip() or 'another run'}; let it end, or give another --out_dir")
    except OSError as e:
        die(f"cannot write {path} ({e.strerror or e}); give another --out_dir")
    lock.truncate(0)
    print(f"process {os.getpid()} ({' '.join(sys.argv)})", file=lock, flush=True)
    return lock


@contextmanager
def claimed(folder):
    """claim_out_dir(folder) for the run inside the with-block (folder None: a run that writes nothing). A run
    refused inside it (SystemExit) leaves no trace: its lock goes, and so does the folder if the claim made it."""
    made = folder is not None and not os.path.exists(folder)
    lock = claim_out_dir(folder) if folder is not None else None
    try:
        yield lock
    except SystemExit:
        if lock is not None and made and os.listdir(folder) == ['run.lock']:
            os.remove(os.path.join(folder, 'run.lock'))
            os.rmdir(folder)
        raise
