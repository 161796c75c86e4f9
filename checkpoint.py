"""
A run's files, for bigram.py and gpt.py alike: the checkpoint written so that a crash or a full disk
never leaves half a file, read as plain data (no pickled code runs), one run at a time in an out_dir
(its lock), log.csv's rows and their one reader, and the one atomic write. It imports no next step
(lora, gpt2, quant, muon) and no script: loading.py takes a model from these files.
"""
import csv
import os
import pickle
import sys
import warnings
from contextlib import contextmanager

from checks import die
from tokenizer import description_in

try:
    import fcntl  # the out_dir lock; Windows has none, and runs without it
except ImportError:
    fcntl = None


# gpt.py's log.csv; plot.py and look.py read it. Older logs end before step_ms, val_bpb or grad_norm.
LOG_COLUMNS = ['kind', 'iter', 'tokens', 'time_s', 'lr', 'train_loss', 'val_loss', 'val_bpb',
               'step_ms', 'grad_norm', 'clipped', 'update_ratio']


def log_row(path, values, new=False):
    """Add a row of values ({column: value}; a missing one is empty) to a log.csv, or start it with
    its header (new). A folder that can't be written, or a full disk: one line, stop."""
    line = ','.join(LOG_COLUMNS)
    if not new:
        cells = []
        for column in LOG_COLUMNS:
            value = values.get(column, '')
            cells.append(f"{value:.6g}" if isinstance(value, float) else str(value))
        line = ','.join(cells)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w' if new else 'a') as f:
            f.write(line + '\n')
    except OSError as e:
        die(f"cannot write {path} ({e.strerror or e}); give another --out_dir, or free some space")


def trim_log(path, step):
    """A resumed run's log.csv as its checkpoint at step left it: the rows written after it (by a
    run that crashed before its next save), the step's 'final' row (the resumed run writes its
    own) and a cut last line go."""
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = f.read().split('\n')
    kept = lines[:1]
    for line in lines[1:-1]:  # the last is '' after a whole last line, or a cut one
        cells = line.split(',')
        if len(cells) < 2 or not cells[1].isdigit():
            continue
        if int(cells[1]) < step or (int(cells[1]) == step and cells[0] != 'final'):
            kept.append(line)
    if kept != lines[:-1]:
        write_atomic({path: ('\n'.join(kept) + '\n').encode()})


def number(v, path, n, row):
    """A log cell as a float, or die naming its line."""
    try:
        return float(v)
    except ValueError:
        die(f"'{path}' line {n} has a value that is not a number: {','.join(row)[:60]}")


def read_log(path, empty_ok=False):
    """The rows of a gpt.py log.csv, as dicts of floats (kind stays a string): the one reader of
    the file, for plot.py, sweep.py, bench.py, look.py and the tests. A damaged file stops in one
    line; so does one with no rows yet, unless empty_ok."""
    if not os.path.isfile(path):
        die(f"'{path}' not found (gpt.py writes <out_dir>/log.csv)")
    with open(path, newline='', encoding='utf-8', errors='replace') as f:
        reader = csv.reader(f)
        header = next(reader, None)
        # older logs lack the health columns, step_ms, and val_bpb
        if header not in (LOG_COLUMNS, LOG_COLUMNS[:-3], LOG_COLUMNS[:-4], LOG_COLUMNS[:-5]):
            die(f"'{path}' is not a gpt.py log: its first line should be {','.join(LOG_COLUMNS)}")
        rows = []
        for n, row in enumerate(reader, 2):
            if not len(header) <= len(row) <= len(LOG_COLUMNS) or row[0] not in ('train', 'eval', 'final'):
                die(f"'{path}' line {n} is not a gpt.py log row: {','.join(row)[:60]}")
            values = {'kind': row[0]}
            # the columns an older log lacks are None, as are empty cells
            for k, v in zip(LOG_COLUMNS[1:], row[1:] + [''] * (len(LOG_COLUMNS) - len(row))):
                values[k] = None
                if v:
                    values[k] = number(v, path, n, row)
            rows.append(values)
    if not rows and not empty_ok:
        die(f"'{path}' has no rows yet: train first")
    return rows


def write_atomic(files, fail=die):
    """Write {path: bytes, or a function that writes to an open file}: each to a temp file,
    fsynced, and only when all are written, each renamed over its old copy, in order (a dataset's
    meta.json last). A crash leaves the old files or the new ones; a write that fails (a full
    disk, a folder that can't be written, a folder in a file's place) removes the temp files and
    calls fail with one line (die: stop), the old files as they were."""
    renamed = False
    try:
        for path, content in files.items():
            os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
            with open(path + '.tmp', 'wb') as f:
                if callable(content):
                    content(f)
                else:
                    f.write(content)
                f.flush()
                os.fsync(f.fileno())
        for path in files:
            os.replace(path + '.tmp', path)
            renamed = True
    except OSError as e:  # path is the file that failed
        for written in files:
            if os.path.lexists(written + '.tmp'):
                os.remove(written + '.tmp')
        kept = ''
        if os.path.exists(path):
            kept = f": {path} keeps the last good state"
        if renamed:
            return fail(f"could not write {path} ({e.strerror or e}); the files before it were written{kept}")
        return fail(f"could not write {path} ({e.strerror or e}); nothing was changed and nothing partial is left"
                    f"{kept}")


def save_checkpoint(path, ckpt):
    """A checkpoint, written atomically: a crash or a full disk leaves the old one whole."""
    import torch
    write_atomic({path: lambda f: torch.save(ckpt, f)})


def load_checkpoint(path, model_type, tok=None, dataset=None):
    """A checkpoint as plain data (weights_only: no pickled code runs), checked against the
    tokenizer of the dataset it is to be used on."""
    import torch
    if not os.path.isfile(path):
        die(f"no checkpoint at {path}; train first (init_from='scratch')")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files
            warnings.simplefilter('ignore')
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


def claim_out_dir(folder):
    """One run writes an out_dir at a time: hold a lock on <folder>/run.lock, so that a second
    run there is refused in one line that names the first. The OS lets go of the lock when the
    process ends, however it ends (kill -9 too), so nothing stale is left to block the next run.
    Keep what this returns."""
    path = os.path.join(folder, 'run.lock')
    if fcntl is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
        # argv may hold bytes that aren't UTF-8
        lock = open(path, 'a+', encoding='utf-8', errors='backslashreplace')
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
    """claim_out_dir(folder) for the run inside the with-block (folder None: a run that writes
    nothing). A run refused inside it (SystemExit) leaves no trace: its lock goes, and so does
    the folder if the claim made it."""
    made = folder is not None and not os.path.exists(folder)
    lock = claim_out_dir(folder) if folder is not None else None
    try:
        yield lock
    except SystemExit:
        if lock is not None and made and os.listdir(folder) == ['run.lock']:
            os.remove(os.path.join(folder, 'run.lock'))
            os.rmdir(folder)
        raise
