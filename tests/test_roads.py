"""roads.py: the precisions and int8's road, chosen by timing them here, kept per machine and shape,
taken again on resume, and overridden by the knobs; every road forced, on this CPU; and the one road not timed, input-major weights for sampling."""
import copy
import hashlib
import json
import re
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, final, one_line_error, run
import gpt
import roads


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A test's own, empty cache file."""
    path = tmp_path / 'cache' / 'roads.json'
    monkeypatch.setattr(roads, 'CACHE', str(path))
    return path


def sleeper(seconds):
    return lambda: time.sleep(seconds)


def test_samples_time_every_candidate():
    times = roads.samples({'slow': sleeper(0.03), 'quick': sleeper(0.001)}, budget_s=0.2)
    assert set(times) == {'slow', 'quick'} and max(times['quick']) < 0.02 <= min(times['slow'])


def timed_as(measured):
    """A stand-in for roads.samples: three equal turns of each candidate's seconds."""
    return lambda candidates: {name: [t] * 3 for name, t in measured.items()}


@pytest.mark.parametrize('measured, expected', [
    ({'float32': 1.0, 'bfloat16': 0.8}, 'bfloat16'),  # 25% faster: taken
    ({'float32': 1.0, 'bfloat16': 0.95}, 'float32'),  # 5% faster: within the margin, the exact one stays
    ({'float32': 1.0, 'bfloat16': 1.3}, 'float32'),
])
def test_decide_takes_the_exact_road_unless_another_is_faster_by_the_margin(cache, monkeypatch, measured, expected):
    monkeypatch.setattr(roads, 'samples', timed_as(measured))
    road, why = roads.decide('k', dict.fromkeys(measured), 'float32', False)
    assert road == expected and why.startswith('measured now: float32 1000.0 ms, bfloat16')


def test_only_a_run_that_trains_keeps_what_it_timed_and_the_next_run_takes_it(cache, monkeypatch):
    monkeypatch.setattr(roads, 'samples', timed_as({'float32': 1.0, 'bfloat16': 0.5}))
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', False)[0] == 'bfloat16'
    assert not cache.exists()  # sampling and evaluation write nothing
    roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)
    kept = json.loads(cache.read_text())
    assert [answer['road'] for answer in kept.values()] == ['bfloat16'] and roads.machine_key() in next(iter(kept))
    monkeypatch.setattr(roads, 'samples', timed_as({'float32': 0.5, 'bfloat16': 1.0}))
    road, why = roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)
    assert road == 'bfloat16' and why.startswith('measured here on 20')  # the same machine takes the same road
    assert roads.decide('other shape', dict.fromkeys(['float32', 'bfloat16']), 'float32', False)[0] == 'float32'


def test_a_damaged_cache_is_timed_again_and_an_unwritable_one_is_said(cache, monkeypatch, capsys):
    monkeypatch.setattr(roads, 'samples', timed_as({'float32': 1.0, 'bfloat16': 0.5}))
    cache.parent.mkdir()
    cache.write_text('{not json')
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[1].startswith('measured now')
    assert len(json.loads(cache.read_text())) == 1
    monkeypatch.setattr(roads, 'CACHE', str(cache / 'inside a file'))
    assert roads.decide('k', dict.fromkeys(['float32', 'bfloat16']), 'float32', True)[0] == 'bfloat16'
    assert 'could not keep the measured roads' in capsys.readouterr().out


def test_precision_times_this_model_and_leaves_its_gradients_and_rng_alone(cache):
    import gpt
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.1))
    x = torch.randint(50, (4, 16))
    before = torch.get_rng_state()
    assert roads.precision('cpu', model, {'n_layer': 1}, (x, x), trains=False) == \
        ('float32', "the checkpoint's own: it names none")  # evaluating and sampling time nothing
    assert not cache.exists()
    road, why = roads.precision('cpu', model, {'n_layer': 1}, (x, x), trains=True)
    assert road in ('float32', 'bfloat16') and why.startswith('measured now') and 'float32' in why
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), before)
    kept = 'not kept' not in why  # turns that disagree (a busy machine) are used once, never kept
    assert cache.exists() == kept and (not kept or len(json.loads(cache.read_text())) == 1)
    assert roads.precision('cpu', model, {}, (x, x), 'float32', 'bfloat16') == ('float32', 'as asked')
    assert roads.precision('cpu', model, {}, (x, x), 'auto', 'bfloat16') == ('bfloat16', 'as this run chose when it started')
    assert roads.precision('cpu', model, {}, (x, x), 'auto', 'bfloat16', False) == ('bfloat16', "the checkpoint's own")
    assert roads.precision('mps', model, {}, (x, x)) == ('float32', 'MPS default')


def test_newton_schulz_is_timed_on_muons_shapes(cache):
    road, why = roads.newton_schulz('cpu', [(32, 32), (96, 32), (32, 32)], write=True)
    assert road in ('float32', 'bfloat16') and re.search(r'float32 [\d.]+ ms, bfloat16 [\d.]+ ms', why)
    assert cache.exists() == ('not kept' not in why)  # kept only when its turns agree
    if cache.exists():
        assert '[(32, 32), (96, 32)]' in next(iter(json.loads(cache.read_text())))
    assert roads.newton_schulz('cpu', []) == ('float32', 'no Muon in this run')
    assert roads.newton_schulz('cuda', [(32, 32)]) == ('float32', 'float32 off the CPU')
    assert roads.newton_schulz('cpu', [(32, 32)], 'bfloat16') == ('bfloat16', 'as asked')


def test_a_run_says_its_roads_keeps_them_and_a_resumed_run_takes_them_again(proj, cache, monkeypatch):
    """A run times its roads and says so; the next run of the same shapes on this machine takes the kept answer;
    a resumed run takes its own roads even where this machine would now choose otherwise; sampling writes nothing."""
    monkeypatch.setattr(roads, 'samples', timed_as({'float32': 1.0, 'bfloat16': 0.5}))
    first = run(proj, 'gpt.py', *TINY, '--max_iters=10', '--optimizer=muon')
    assert first.returncode == 0, first.stderr
    assert 'device: cpu, dtype: bfloat16 (measured now: float32 1000.0 ms, bfloat16 500.0 ms)' in first.stdout
    assert 'Newton-Schulz in bfloat16 (measured now' in first.stdout
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['roads'] == {'dtype': 'bfloat16',
                                                                               'newton_schulz': 'bfloat16'}
    again = run(proj, 'gpt.py', *TINY, '--max_iters=10', '--optimizer=muon', '--out_dir=again')
    assert 'dtype: bfloat16 (measured here on 20' in again.stdout
    cache.unlink()
    monkeypatch.setattr(roads, 'samples', timed_as({'float32': 1.0, 'bfloat16': 2.0}))
    resumed = run(proj, 'gpt.py', *TINY, '--max_iters=20', '--optimizer=muon', '--init_from=resume')
    assert resumed.returncode == 0, resumed.stderr
    assert 'dtype: bfloat16 (as this run chose when it started)' in resumed.stdout
    assert 'Newton-Schulz in bfloat16 (as this run chose when it started)' in resumed.stdout
    hashes = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in (proj / 'out').iterdir()}
    sampled = run(proj, 'gpt.py', *TINY, '--init_from=resume', '--max_iters=0')
    assert "dtype: bfloat16 (the checkpoint's own)" in sampled.stdout
    assert hashes == {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in (proj / 'out').iterdir()}
    assert not cache.exists()


@pytest.mark.parametrize('dtype, ns', [('float32', 'bfloat16'), ('bfloat16', 'float32')])
def test_every_precision_can_be_forced(proj, cache, dtype, ns):
    r = run(proj, 'gpt.py', *TINY, '--max_iters=10', '--optimizer=muon', f'--dtype={dtype}', f'--newton_schulz={ns}')
    assert r.returncode == 0, r.stderr
    assert f'dtype: {dtype} (as asked)' in r.stdout and f'Newton-Schulz in {ns} (as asked)' in r.stdout
    assert final(proj / 'out')['val_loss'] < 4.5
    assert not cache.exists()  # nothing was timed


def test_the_road_knobs_are_refused_where_they_would_be_ignored(proj):
    assert 'add --quantize=int8' in one_line_error(run(proj, 'gpt.py', *TINY, '--int8_road=kernel'))
    assert "optimizer='adamw'" in one_line_error(run(proj, 'gpt.py', *TINY, '--optimizer=adamw',
                                                     '--newton_schulz=float32'))
    assert 'must be one of' in one_line_error(run(proj, 'gpt.py', *TINY, '--int8_road=fast'))


@pytest.mark.parametrize('asked', ['auto', 'float', 'kernel'])
def test_int8_takes_the_road_asked_or_timed_and_says_which(trained, asked):
    import quant
    proj, _ = trained
    r = run(proj, 'gpt.py', *TINY, '--init_from=resume', '--eval_only=true', '--quantize=int8', f'--int8_road={asked}')
    assert r.returncode == 0, r.stderr
    line = re.search(r'^int8 on the (\w+) road \((.*)\)$', r.stdout, re.M)
    exact = quant.int8_kernel_is_exact()
    if asked == 'auto' and exact:  # the faster of the two exact roads, timed
        assert line.group(1) in ('kernel', 'float') and line.group(2).startswith('both exact here; timed now')
    elif asked == 'auto':
        assert line.groups() == ('float', 'this CPU does not sum int8 exactly')
    elif asked == 'kernel' and not exact:  # an AVX2 CPU, or oneDNN held to AVX2: never a wrong sum
        assert line.groups() == ('float', 'the kernel was asked, but this CPU does not sum int8 exactly')
    else:
        assert line.groups() == (asked, 'as asked')


@pytest.mark.parametrize('asked', ['auto', 'float', 'kernel'])
def test_int8_never_takes_a_kernel_whose_sums_are_wrong(monkeypatch, asked):
    """Every CPU here sums the kernel road's pieces exactly (VNNI, or AVX2 alone); a CPU whose kernel did not
    (or a torch without it) gets the float road, asked for the kernel or not, and its results stay right."""
    import quant
    monkeypatch.setattr(quant, 'int8_kernel_is_exact', lambda: False)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    model = torch.nn.Sequential(quant.Int8Linear(layer))
    line = roads.int8(model, asked)
    assert model[0].road == 'float' and line.startswith('int8 on the float road (')
    with torch.no_grad():
        x = torch.randn(5, 64)
        assert torch.allclose(model(x), x @ model[0].dequantize().t() + layer.bias, atol=1e-5)


def lecture_like(**parts):
    """A small GPT with the lecture's parts (ReLU, biases), and with a tied head or its own."""
    torch.manual_seed(0)
    config = gpt.GPTConfig(11, 16, 2, 2, 16, 0.0, rope=False, rmsnorm=False, qk_norm=False, relu=True, **parts)
    return gpt.GPT(config).eval()


@pytest.mark.parametrize('tie_weights', [True, False])
def test_input_major_weights_are_the_same_model(tie_weights):
    """roads.input_major reorders each Linear's weight in memory and nothing else: the same numbers,
    each column in one piece; the same logits to float rounding, and the same greedy batch, cached
    and uncached, past block_size, as the usual layout (the one training and a GPU keep)."""
    usual = lecture_like(tie_weights=tie_weights)
    model = copy.deepcopy(usual)
    roads.input_major(model)
    pairs = [(a, b) for a, b in zip(model.modules(), usual.modules()) if isinstance(a, torch.nn.Linear)]
    for a, b in pairs:
        assert a.weight.stride() == (1, a.out_features) and b.weight.is_contiguous()
        assert torch.equal(a.weight, b.weight)
    idx = torch.randint(11, (3, 16))
    assert torch.allclose(model(idx, idx)[0], usual(idx, idx)[0], atol=1e-5)
    prompts = torch.randint(11, (4, 3))
    for kv_cache in (True, False):
        ours, theirs = (gpt.generate(m, prompts, 40, temperature=0, kv_cache=kv_cache) for m in (model, usual))
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize('kind', ['int8', 'nf4'])
def test_an_input_major_model_quantizes_to_the_same_codes(kind):
    """bench.py quantizes copies of the model it samples, whose weights are input-major: the codes
    are the same, stored row by row as quant.py's roads were written and timed for."""
    import quant
    usual = lecture_like(tie_weights=False)
    model = copy.deepcopy(usual)
    roads.input_major(model)
    for m in (model, usual):
        quant.quantize_model(m, kind)
    ours, theirs = model.state_dict(), usual.state_dict()
    for name in [name for name in theirs if name.startswith('blocks')]:  # the head stays a Linear
        assert torch.equal(ours[name], theirs[name]) and ours[name].is_contiguous()


def test_the_model_a_run_samples_on_a_cpu_is_input_major():
    model = lecture_like(tie_weights=False).train()
    settings = SimpleNamespace(quantize='', int8_road='auto')
    model = gpt.inference_model(model, SimpleNamespace(lora=None), settings)
    assert not model.training
    assert all(m.weight.stride(0) == 1 for m in model.modules() if isinstance(m, torch.nn.Linear))
