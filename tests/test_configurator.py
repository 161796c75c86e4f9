"""The configurator's accepted and refused forms, on a scope like a script's globals."""
import math
import subprocess
import sys

import pytest

from configurator import configure, knobs
from conftest import REPO


def scope():
    return {'n_layer': 4, 'dropout': 0.1, 'compile': True, 'top_k': None, 'out_dir': 'out',
            'prompt': '\n', 'n_embd': 64, 'ROOT': '/x', '_private': 1, 'math': math, 'f': len}


def test_knobs_are_plain_lowercase_globals():
    assert set(knobs(scope())) == {'n_layer', 'dropout', 'compile', 'top_k', 'out_dir', 'prompt', 'n_embd'}


@pytest.mark.parametrize('arg, key, want', [
    ('--dropout=0', 'dropout', 0.0),
    ('--dropout=.25', 'dropout', 0.25),
    ('--n_layer=8', 'n_layer', 8),
    ('--n_layer=1e1', 'n_layer', 10),
    ('--compile=false', 'compile', False),
    ('--compile=False', 'compile', False),
    ('--compile=0', 'compile', False),
    ('--compile=no', 'compile', False),
    ('--compile=true', 'compile', True),
    ('--compile=True', 'compile', True),
    ('--compile=1', 'compile', True),
    ('--compile=yes', 'compile', True),
    ('--top_k=50', 'top_k', 50),
    ('--out_dir=runs/a=b', 'out_dir', 'runs/a=b'),
    ('--prompt=123', 'prompt', '123'),
    ('--prompt="ROMEO:"', 'prompt', 'ROMEO:'),
])
def test_accepted(arg, key, want):
    s = scope()
    configure(s, [arg])
    assert s[key] == want and type(s[key]) is type(want)


@pytest.mark.parametrize('arg, message', [
    ('--n_embed=3', "did you mean 'n_embd'"),
    ('--ROOT=/y', "unknown config key 'ROOT'"),
    ('--math=1', "unknown config key 'math'"),
    ('--n_layer=2.5', 'not a valid int'),
    ('--n_layer=abc', 'not a valid int'),
    ('--n_layer=True', 'not a valid int'),
    ('--dropout=abc', 'not a valid float'),
    ('--compile=maybe', 'not a valid bool'),
    ('--n_layer', "has no '='"),
    ('missing_config.py', 'not found'),
])
def test_refused(arg, message):
    with pytest.raises(SystemExit) as e:
        configure(scope(), [arg])
    assert message in str(e.value) and str(e.value).startswith('error:')


def test_config_file(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("import math\nn_layer = 6\ndropout = 0\nscale = lambda x: x\nn_embd = 2 ** 7\n")
    s = scope()
    configure(s, [str(cfg), '--n_layer=2'])  # files first, then arguments, in order
    assert (s['n_layer'], s['dropout'], s['n_embd']) == (2, 0.0, 128)


def test_config_file_typo_and_errors(tmp_path):
    typo, broken = tmp_path / 'typo.py', tmp_path / 'broken.py'
    typo.write_text("dropuot = 0.1\n")
    broken.write_text("n_layer = (\n")
    for cfg, message in ((typo, "unknown config key 'dropuot' (did you mean 'dropout'?)"),
                         (broken, 'SyntaxError')):
        s = scope()
        with pytest.raises(SystemExit) as e:
            configure(s, [str(cfg)])
        assert message in str(e.value)
        assert s == scope()  # nothing applied


def test_values_are_never_executed(tmp_path):
    s = scope()
    marker = tmp_path / 'pwned'
    configure(s, [f"--out_dir=__import__('os').mkdir('{marker}')"])
    assert not marker.exists() and s['out_dir'].startswith('__import__')


def test_import_does_not_read_argv():
    # the scripts import cleanly even when the command line holds arguments they would refuse
    code = "import sys; sys.argv += ['--bogus=1']; import bigram, prepare, configurator; print('ok')"
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr


def test_refusal_survives_python_O(proj):
    r = subprocess.run([sys.executable, '-O', 'bigram.py', '--n_layer=1'], cwd=proj,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'unknown config key' in r.stderr
