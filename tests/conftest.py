"""Shared fixtures and the script runner.

Work done once: the tiny corpus is prepared once per session, and each shared model is trained once;
every test gets its own copy (shutil.copytree into its tmp_path), so no test can spoil another's files.

run(proj, 'gpt.py', *args) runs the real script's main() in this process, with the settings applied by
the configurator exactly as the command line would, SystemExit turned into an exit code and its message
into stderr, and the module's globals restored afterwards. run_process() starts a real Python process,
for the tests where the process is the point: tracebacks, signals, kill -9, torchrun, imports.
"""
import contextlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # so the tests import the real prepare, configurator, bigram and gpt
SHAKESPEARE = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')

from configurator import configure  # noqa: E402

# pytest -n 2 (pytest-xdist): two workers on a 2-core machine, one thread each. Two busy PyTorch processes of two
# threads each slow each other many times over (their threads spin); two of one thread each ran 1.75x-1.9x the
# throughput of one of two (docs/profile.md). The processes a test starts inherit the one thread.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    import torch  # noqa: E402
    torch.set_num_threads(1)

# roads.py keeps what it timed in a file: the tests' own, never the user's ~/.cache (roads.CACHE reads this)
os.environ.setdefault('MINIGPT_ROADS', os.path.join(tempfile.mkdtemp(prefix='roads-'), 'roads.json'))

# a small corpus with non-ASCII characters, long enough for block_size 32 in both splits
CORPUS = ("First Citizen: Before we proceed any further, hear me speak.\n"
          "Ça va? Naïve café, déjà vu — Ångström. 😀\n"
          "All: Speak, speak. You are all resolved rather to die than to famish?\n") * 40

# a tiny gpt.py run: 2 layers of 32, a block of 16, a few seconds of training
TINY = ['--gradient_accumulation_steps=1', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=16',
        '--batch_size=8', '--eval_iters=4', '--eval_interval=10', '--log_interval=5', '--warmup_iters=5',
        '--max_new_tokens=30', '--compile=false']

SCRIPTS = {'gpt.py': 'gpt', 'bigram.py': 'bigram', 'prepare.py': 'prepare', 'plot.py': 'plot', 'look.py': 'look'}


def run_process(proj, *args, timeout=300, env=None):
    """Run `python <args>` as a new process inside the copied project; return the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=proj, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, 'PYTHONHASHSEED': '0', **(env or {})})


def run_in_process(proj, script, args):
    """What `python <script> <args>` does in proj, as a CompletedProcess, without starting a process."""
    module = importlib.import_module(SCRIPTS[script])
    scope = vars(module)
    saved = dict(scope)
    gpt_scope = vars(importlib.import_module('gpt'))  # look.py sets gpt.py's knobs: restored afterwards too
    gpt_saved = dict(gpt_scope)
    out, err, code = io.StringIO(), io.StringIO(), 0
    cwd = os.getcwd()
    os.chdir(proj)  # config files and --input paths are relative to where the command runs
    try:
        scope['ROOT'] = str(proj)  # data/ and out_dir are relative to the script's folder: the copy
        gpt_scope['ROOT'] = str(proj)  # look.py reads data/ as gpt.py does
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if script == 'plot.py':  # plot.py's command line: --knobs, then the logs
                    configure(scope, [a for a in args if a.startswith('--')])
                    module.main([a for a in args if not a.startswith('--')])
                elif script == 'look.py':  # its own knobs, gpt.py's, then the model
                    module.configure_both([a for a in args if a.startswith('--')])
                    module.main([a for a in args if not a.startswith('--')])
                else:
                    configure(scope, list(args))
                    module.main()
            except SystemExit as e:  # as Python does: a message goes to stderr with exit code 1
                code = e.code if isinstance(e.code, int) or e.code is None else 1
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
    finally:
        os.chdir(cwd)
        for before, now in ((saved, scope), (gpt_saved, gpt_scope)):
            for k in set(now) - set(before):
                del now[k]
            now.update(before)
    return subprocess.CompletedProcess([script, *args], code or 0, out.getvalue(), err.getvalue())


def run(proj, *args, timeout=300, env=None):
    """Run `python <args>` in the copied project: the project's scripts in this process, anything else
    (torchrun, python -m ...) or anything with its own environment as a real process."""
    if args and args[0] in SCRIPTS and env is None:
        return run_in_process(proj, args[0], args[1:])
    return run_process(proj, *args, timeout=timeout, env=env)


def copy_project(template, tmp_path):
    """A test's own copy of a prepared project, and the corpus beside it as corpus.txt."""
    p = tmp_path / 'proj'
    shutil.copytree(template, p)
    shutil.copy(template.parent / 'corpus.txt', tmp_path / 'corpus.txt')
    return p


@pytest.fixture(scope='session')
def prepared(tmp_path_factory):
    """Once per session: a copy of the project's scripts with the tiny corpus in data/shakespeare_char."""
    root = tmp_path_factory.mktemp('prepared')
    p = root / 'proj'
    p.mkdir()
    for f in os.listdir(REPO):
        if f.endswith('.py'):
            shutil.copy(os.path.join(REPO, f), p / f)
    (root / 'corpus.txt').write_text(CORPUS, encoding='utf-8')
    r = run(p, 'prepare.py', f'--input={root / "corpus.txt"}')
    assert r.returncode == 0, r.stderr
    return p


@pytest.fixture
def proj(prepared, tmp_path):
    """The test's own copy of the prepared project."""
    return copy_project(prepared, tmp_path)


@pytest.fixture(scope='session')
def trained_once(prepared, tmp_path_factory):
    """Once per session: the tiny project after 20 steps of training in out/, and that run's output."""
    p = copy_project(prepared, tmp_path_factory.mktemp('trained'))
    r = run(p, 'gpt.py', *TINY, '--max_iters=20', '--lr_decay_iters=40', '--dropout=0.1', '--prompt=First')
    assert r.returncode == 0, r.stderr
    return p, r


@pytest.fixture
def trained(trained_once, tmp_path):
    """The test's own copy of the trained project, and the output of the run that trained it."""
    template, r = trained_once
    return copy_project(template, tmp_path), r


def final(folder):
    """A training run's final figures, from its files: log.csv's 'final' row (checkpoint.read_log), with
    whole-split val_loss and val_bpb, iter and time_s."""
    from checkpoint import read_log
    return [row for row in read_log(os.path.join(folder, 'log.csv')) if row['kind'] == 'final'][-1]


def val_lines(out):
    return re.findall(r'^step \d+: train loss [\d.]+, val loss [\d.]+$', out, flags=re.M)


def one_line_error(r):
    """The refusal is a non-zero exit with one line on stderr and no traceback."""
    assert r.returncode != 0, r.stdout
    assert 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]
