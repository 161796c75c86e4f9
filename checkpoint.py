"""
A run's files, for bigram.py and gpt.py alike: the checkpoint written so that a crash or a full disk
never leaves half a file, read as plain data (no pickled code runs), and one run at a time in an
out_dir. It never imports bigram or gpt.
"""
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


def read_model(name, root, tok=None, dataset=None, block_size=None):
    """A checkpoint (a ckpt.pt's path, from root), or GPT-2 as one (gpt2.py: a hub name, a
    Hugging Face folder or its model.safetensors; block_size crops its 1,024 positions), checked
    against the dataset's tokenizer; and the file it came from."""
    path = os.path.join(root, name)
    if os.path.isfile(path) and not path.endswith('.safetensors'):
        return load_checkpoint(path, 'gpt', tok, dataset), path
    if os.path.isfile(os.path.join(path, 'ckpt.pt')):
        die(f"{name} is a run's folder, not a model: give its checkpoint, --init_from={os.path.join(name, 'ckpt.pt')} "
            f"(or best.pt), or continue that run with --init_from=resume --out_dir={name}")
    from gpt2 import load_gpt2  # only for GPT-2: huggingface_hub and safetensors
    return load_gpt2(path if os.path.exists(path) else name, tok, dataset, block_size)


def full_weights(path, ckpt, tok, dataset, model_class, merge=True):
    """All of a gpt checkpoint's weights. A LoRA checkpoint holds only its adapters: its base's
    weights come from the base (a checkpoint, or GPT-2), once checked to be the very file they
    trained on, with the adapters merged into a model_class (merge=False: the base's alone, for a
    LoRA run to resume)."""
    if 'lora' not in ckpt:
        return ckpt['model']
    from lora import base_path, base_problem, merged_weights
    base = base_path(path, ckpt['base'])
    problem = base_problem(base, ckpt['base'])
    if problem:
        die(f"{path} is a LoRA checkpoint on the base {base}, which {problem}")
    theirs = read_model(base, '/', tok, dataset, ckpt['model_args']['block_size'])[0]
    weights = full_weights(base, theirs, tok, dataset, model_class)
    return merged_weights(model_class(**ckpt['model_args']), weights, ckpt) if merge else weights


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


# ------------------------------------------- how a gpt.py run takes a model from a file
def resume(state, k, configured, data, model_class, log=print):
    """init_from='resume': <out_dir>/ckpt.pt's step, time, best and LoRA settings into state
    (gpt.py's State); the weights (a LoRA run's: its base's; the adapters load once the model is
    adapted). k: the knobs; configured: the names a config file or the command line set."""
    ckpt = state.ckpt = load_checkpoint(state.ckpt_path, 'gpt', data.tok, k.dataset)
    state.iter_num = ckpt['iter_num']
    state.best_iter = ckpt.get('best_iter', 0)
    if 'best_iter' in ckpt:  # checkpoints from before best.pt have none
        state.best_val_loss = ckpt['best_val_loss']
    state.last_save = f"{state.ckpt_path} keeps step {state.iter_num}"
    state.train_time = ckpt.get('train_time', 0.0)
    state.lora = ckpt.get('lora')
    state.roads = ckpt.get('roads')  # its precisions (roads.py); none in older checkpoints
    state.base = ckpt.get('base')
    if k.lora_rank and not state.lora:
        die(f"{state.ckpt_path} is not a LoRA run, so it cannot resume with lora_rank > 0; to add LoRA, "
            f"fine-tune it: --init_from={os.path.join(k.out_dir, 'ckpt.pt')} --out_dir=ANOTHER")
    if k.max_iters and not k.eval_only and state.iter_num >= k.max_iters:
        log(f"note: {state.ckpt_path} is at step {state.iter_num}, at or past max_iters={k.max_iters}: "
            f"nothing to train (a higher --max_iters trains on); its best model is evaluated again")
    keep_model_settings(state, ckpt, k, configured)
    if state.lora:  # a QLoRA model samples on its own 4-bit base, never another
        lora_settings = {'lora_rank': state.lora['rank'], 'lora_alpha': state.lora['alpha']}
        if state.lora['quantize']:
            lora_settings['quantize'] = state.lora['quantize']
        refuse_other_settings(state, lora_settings, k, configured)
    return full_weights(state.ckpt_path, ckpt, data.tok, k.dataset, model_class, merge=False)


def start_from(state, k, configured, data, model_class, root):
    """init_from=PATH: a checkpoint's (or GPT-2's) architecture and weights, from step 0. A new
    LoRA run records its base (lora.py); it keeps its own link to it only once it trains. A run
    that only evaluates or samples takes the checkpoint's precisions too."""
    limit = None
    if 'block_size' in configured:
        limit = k.block_size  # crops GPT-2's 1,024 positions
    ckpt, path = read_model(k.init_from, root, data.tok, k.dataset, limit)
    if k.lora_rank:
        from lora import base_record
        state.lora = {'rank': k.lora_rank, 'alpha': k.lora_alpha, 'quantize': k.quantize}
        state.base = base_record(path)
    if not k.max_iters or k.eval_only:
        state.roads = ckpt.get('roads')
    keep_model_settings(state, ckpt, k, configured)
    return full_weights(path, ckpt, data.tok, k.dataset, model_class)


def keep_model_settings(state, ckpt, k, configured):
    """A loaded model keeps its architecture (dropout is the run's) and its template."""
    state.model_args = {**ckpt['model_args'], 'dropout': k.dropout}
    state.template = state.template or ckpt.get('template', {})
    architecture = {}
    for name, value in state.model_args.items():
        if name in state.config and name != 'dropout':
            architecture[name] = value
    refuse_other_settings(state, architecture, k, configured)


def refuse_other_settings(state, from_checkpoint, k, configured):
    """A knob set to another value than the checkpoint's is refused, never ignored; the saved
    config says what was used."""
    for name, value in from_checkpoint.items():
        if name in configured and getattr(k, name) != value:
            die(f"--{name}={getattr(k, name)!r}, but the model of {k.init_from} has {name}={value!r}; it comes "
                f"with the checkpoint: leave --{name} out")
    state.config |= from_checkpoint


def restore_randomness(run, state):
    """On resume, the data order and this process's dropout stream go on where they stopped:
    after the model is built, whose init draws from the same generator."""
    import torch
    ckpt = state.ckpt
    if ckpt is None:
        return
    state.data_rng.set_state(ckpt['rng']['data'])
    if run.rank < len(ckpt['rng']['torch']):  # a row per process
        torch.set_rng_state(ckpt['rng']['torch'][run.rank].clone())
        if run.dev_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(ckpt['rng']['cuda'][run.rank].clone())
    run.log(f"resumed from {state.ckpt_path} at step {state.iter_num}")
