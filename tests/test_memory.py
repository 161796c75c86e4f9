"""Memory: int8 and NF4 weights, gradient checkpointing, and the eval-only mode."""
import copy
import re

import pytest
import torch
import torch.nn as nn
from torch.nn import functional as F

import gpt
import quant
from conftest import REPO, TINY, one_line_error, run, run_process, val_lines

# QLoRA's NF4 table as published (bitsandbytes' values)
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def model(seed=0, dropout=0.0, bias=False):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(65, 32, 2, 2, 64, dropout, rope=True, rmsnorm=True, qk_norm=True, bias=bias))


def test_nf4_code_matches_its_definition():
    code = quant.nf4_code()
    assert code.shape == (16,) and torch.equal(code, code.sort().values)
    assert code[0] == -1 and code[-1] == 1 and (code == 0).sum() == 1  # exact ends, an exact zero
    assert torch.allclose(code, torch.tensor(NF4), atol=1e-6)
    # 8 positive values at normal quantiles, equally spaced in probability (so equally likely)
    probs = torch.special.ndtr(code[8:] * torch.special.ndtri(torch.tensor(1 - (1 / 30 + 1 / 32) / 2)))
    assert torch.allclose(probs.diff(), probs.diff()[0].expand(7), atol=1e-6)


def test_int8_round_trip_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    linear = nn.Linear(96, 48, bias=False)
    q = quant.Int8Linear(linear)
    err = (q.dequantize() - linear.weight).abs()
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    assert (err <= q.scale[:, None] / 2 + 1e-7).all()  # per row: half of absmax / 127


def test_nf4_packs_two_codes_a_byte_and_beats_uniform_4_bit():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128, bias=False)
    nn.init.normal_(linear.weight)
    q = quant.NF4Linear(linear)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == linear.weight.numel() // 2
    nf4_err = (q.dequantize() - linear.weight).pow(2).mean()
    # a plain absmax 4-bit quantizer with the same blocks of 64: 15 evenly spaced levels in [-1, 1]
    blocks = linear.weight.detach().reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    uniform = (torch.round(blocks / absmax * 7) / 7 * absmax).reshape(linear.weight.shape)
    uniform_err = (uniform - linear.weight).pow(2).mean()
    assert nf4_err < 0.8 * uniform_err
    assert nf4_err.sqrt() < 0.1 * linear.weight.pow(2).mean().sqrt()  # about 9% of the weights' size


def spread(m, size=0.05):
    """Trained weights are far from init: give the matrices (and biases) that much spread."""
    for name, p in m.named_parameters():
        p.data += (size if p.dim() > 1 else 10 * size if name.endswith('bias') else 0.0) * torch.randn_like(p)
    return m


@pytest.mark.parametrize('size', [0.05, 0.2])  # about a trained model's weights, and 4x that
@pytest.mark.parametrize('bias', [False, True])  # the lecture's model has biases: they stay as they are
@pytest.mark.parametrize('kind, bound', [('int8', 0.05), ('nf4', 0.3)])  # weights off by ~0.7% (int8: and its
def test_quantized_logits_are_close_to_fp32(kind, bound, bias, size):  # activations by ~0.4%) and ~9%
    m = spread(model(bias=bias).eval(), size)
    idx = torch.randint(65, (4, 32))
    with torch.no_grad():
        ref = m(idx, idx)[0]
        fp32 = quant.weight_bytes(m)
        quant.quantize_model(m, kind)
        logits = m(idx, idx)[0]
    assert (logits - ref).norm() / ref.norm() < bound
    assert fp32 / quant.weight_bytes(m) > {'int8': 3.7, 'nf4': 7.0}[kind] - 0.5 * bias  # scales (and biases) cost a little


def test_int8_kernel_is_used_only_where_it_is_exact():
    """The probe's answer is the kernel's truth on the largest products of the kernel road's pieces (in [-128, -1])
    and codes (+-127), over a long row."""
    a = torch.where(torch.rand(64, 1536) < 0.5, -128, -1).to(torch.int8)
    b = torch.where(torch.rand(96, 1536) < 0.5, -127, 127).to(torch.int8)
    exact = torch.equal(torch._int_mm(a, b.t()).long(), a.long() @ b.long().t())
    assert quant.int8_kernel_is_exact() == exact


@pytest.mark.parametrize('bias', [False, True])
def test_int8_roads_agree_with_the_dequantized_weights(bias):
    """The int8 kernel's road (where this CPU sums int8 exactly) and the float road (everywhere) both
    compute x @ dequantize()^T + bias, for one token and many, at large and tiny activations."""
    torch.manual_seed(0)
    layer = nn.Linear(1536, 384, bias=bias)
    layer.weight.data.normal_(0, 0.2)
    q = quant.Int8Linear(layer)
    x = torch.randn(2, 33, 1536) * torch.logspace(-3, 3, 33)[:, None]
    roads = ['float']
    if quant.int8_kernel_is_exact():  # with VNNI, and with AVX2 alone (the test below)
        roads.append('kernel')
    for road in roads:
        q.road = road
        with torch.no_grad():
            ref = F.linear(x.double(), q.dequantize().double(), None if bias is False else layer.bias.double())
            for y, r in ((q(x), ref), (q(x[:1, :1]), ref[:1, :1])):  # many tokens, and one
                assert torch.allclose(y.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max())


INT8_LAYER = """
import sys, torch, quant
torch.manual_seed(0)
layer = torch.nn.Linear(384, 1152)
layer.weight.data.normal_(0, 0.2)
q = quant.Int8Linear(layer)
if quant.int8_kernel_is_exact():
    q.road = 'kernel'
with torch.no_grad():
    y = q(torch.randn(33, 384) * 3)
b = torch.where(torch.rand(96, 1536) < 0.5, -127, 127).to(torch.int8)
exact = {}
for lo, hi in ((-128, -1), (-128, 127)):  # the kernel road's pieces; any byte, whose 16-bit pair sums overflow
    a = torch.where(torch.rand(64, 1536) < 0.5, lo, hi).to(torch.int8)
    exact[lo, hi] = torch.equal(torch._int_mm(a, b.t()).long(), a.long() @ b.long().t())
torch.save({'fast': quant.int8_kernel_is_exact(), 'exact': exact, 'y': y}, sys.argv[1])
"""


@pytest.mark.parametrize('isa', ['', 'AVX2'])
def test_int8_gives_the_same_results_on_every_cpu(isa, tmp_path):
    """oneDNN limited to AVX2 (no VNNI) behaves as on an AVX2-only CPU: there it adds pairs of products in
    16 bits, which any byte times 127 can overflow (it does on an AVX512 CPU held to AVX2), but the kernel road's
    pieces in [-128, -1] do not. The probe tells the kernel's truth, the kernel road runs wherever it is exact, and the
    layer's output is the same as this CPU's."""
    script = tmp_path / 'layer.py'
    script.write_text(INT8_LAYER)
    r = run_process(tmp_path, str(script), str(tmp_path / 'y.pt'),
                    env={'PYTHONPATH': REPO, **({'ONEDNN_MAX_CPU_ISA': isa} if isa else {})})
    assert r.returncode == 0, r.stderr
    there = torch.load(tmp_path / 'y.pt')
    assert there['fast'] == there['exact'][-128, -1]
    exec(INT8_LAYER.split('torch.save')[0], scope := {'sys': None})  # the same layer in this process
    assert torch.allclose(there['y'], scope['y'], rtol=1e-5, atol=1e-5 * scope['y'].abs().max())
    if scope['exact'][-128, 127] and not there['exact'][-128, 127]:  # a VNNI CPU held to AVX2
        assert there['fast']  # the kernel road runs there too, with its sums exact


@pytest.mark.parametrize('kind', ['int8', 'nf4'])
def test_quantized_results_depend_on_neither_batch_nor_cache(kind):
    """Each sequence's logits are its own: alone or in a batch (to the bit), fed whole or a token at a time (the
    cache)."""
    m = spread(model().eval(), 0.2)
    quant.quantize_model(m, kind)
    idx = torch.randint(65, (6, 20))
    with torch.no_grad():
        batch = m(idx, idx)[0]
        alone = torch.cat([m(idx[i:i + 1], idx[i:i + 1])[0] for i in range(6)])
        cache = gpt.KVCache(2, 6, 2, 32, 32, 'cpu', torch.float32)
        stepped = torch.cat([m(idx[:, t:t + 1], cache=cache)[0] for t in range(20)], dim=1)
    assert torch.allclose(batch, alone, atol=1e-5, rtol=0) and torch.allclose(batch, stepped, atol=1e-4, rtol=0)


@pytest.mark.parametrize('kind', ['int8', 'nf4'])
def test_cached_equals_uncached_under_quantization(kind):
    m = spread(model().eval(), 0.2)
    quant.quantize_model(m, kind)
    prompt = torch.randint(65, (3, 5))
    a, b = (gpt.generate(m, prompt, 25, 1.0, kv_cache=c, generator=torch.Generator().manual_seed(1)) for c in (True, False))
    assert torch.equal(a, b)
    a, b = (gpt.generate(m, prompt, 25, 0.0, kv_cache=c) for c in (True, False))
    assert torch.equal(a, b)


def test_int8_greedy_tokens_are_those_of_its_dequantized_weights():
    m = spread(model().eval(), 0.1)
    dequantized = copy.deepcopy(m)
    quant.quantize_model(m, 'int8')
    for q, d in zip(m.modules(), dequantized.modules()):
        if isinstance(q, quant.Int8Linear):
            d.weight.data = q.dequantize()
    prompt = torch.randint(65, (4, 3))
    assert torch.equal(gpt.generate(m, prompt, 60, 0.0), gpt.generate(dequantized, prompt, 60, 0.0))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    grads = []
    for on in (False, True):
        m = model(dropout=0.1).train()
        m.gradient_checkpointing = on
        torch.manual_seed(5)  # the same dropout masks in both
        idx = torch.randint(65, (4, 32))
        loss = m(idx, idx.roll(-1, 1))[1]
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in m.parameters()]))
    assert grads[0][0] == grads[1][0]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_gradient_checkpointing_prints_the_same_step_lines(proj):
    args = [*TINY, '--max_iters=20', '--dropout=0.1', '--max_new_tokens=0']
    plain = run(proj, 'gpt.py', *args, '--out_dir=plain')
    ckpt = run(proj, 'gpt.py', *args, '--out_dir=ckpt', '--gradient_checkpointing=true')
    assert plain.returncode == 0 and ckpt.returncode == 0, plain.stderr + ckpt.stderr
    assert val_lines(plain.stdout) == val_lines(ckpt.stdout) and len(val_lines(plain.stdout)) == 3


def test_eval_only_and_quantized_runs(trained):
    proj, _ = trained
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    log = (proj / 'out' / 'log.csv').read_text()
    bpb = {}
    for kind in ('', 'int8', 'nf4'):
        r = run(proj, 'gpt.py', '--init_from=resume', '--eval_only=true', f'--quantize={kind}')
        assert r.returncode == 0, r.stderr
        assert not val_lines(r.stdout) and 'iter ' not in r.stdout and '---------------' not in r.stdout
        bpb[kind] = float(re.search(r'^whole-split val loss [\d.]+ \([\d,]+ predictions\), val bpb ([\d.]+)$', r.stdout, re.M).group(1))
    assert abs(bpb['int8'] - bpb['']) < 0.01 and abs(bpb['nf4'] - bpb['']) < 0.1
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before and (proj / 'out' / 'log.csv').read_text() == log
    r = run(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', '--quantize=nf4', '--max_new_tokens=20')
    assert r.returncode == 0 and 'MiB (7.' in r.stdout and r.stdout.endswith('---------------\n'), r.stderr


@pytest.mark.parametrize('args, message', [
    (['--quantize=int4'], "quantize must be one of '', 'int8', 'nf4', not 'int4'"),
    (['--gradient_checkpointing=maybe'], 'not a valid bool'),
    (['--gradient_checkpointing=2'], 'not a valid bool'),
    (['--eval_only=true'], 'eval_only needs a model'),
])
def test_memory_knobs_refuse_bad_values(proj, args, message):
    assert message in one_line_error(run(proj, 'gpt.py', *TINY, *args))
