"""Shared fixtures: a throwaway copy of the project with a tiny prepared corpus, and a script runner."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # so the tests import the real prepare, configurator, bigram and gpt
SHAKESPEARE = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')

# a small corpus with non-ASCII characters, long enough for block_size 32 in both splits
CORPUS = ("First Citizen: Before we proceed any further, hear me speak.\n"
          "Ça va? Naïve café, déjà vu — Ångström. 😀\n"
          "All: Speak, speak. You are all resolved rather to die than to famish?\n") * 40


def run(proj, *args, timeout=300, env=None):
    """Run `python <args>` inside the copied project; return the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=proj, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, 'PYTHONHASHSEED': '0', **(env or {})})


@pytest.fixture
def proj(tmp_path):
    """A copy of the project's scripts with a prepared tiny dataset in data/shakespeare_char."""
    p = tmp_path / 'proj'
    p.mkdir()
    for f in os.listdir(REPO):
        if f.endswith('.py'):
            shutil.copy(os.path.join(REPO, f), p / f)
    (tmp_path / 'corpus.txt').write_text(CORPUS, encoding='utf-8')
    r = run(p, 'prepare.py', f'--input={tmp_path / "corpus.txt"}')
    assert r.returncode == 0, r.stderr
    return p


def one_line_error(r):
    """The refusal is a non-zero exit with one line on stderr and no traceback."""
    assert r.returncode != 0, r.stdout
    assert 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]
