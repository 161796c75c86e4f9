"""Memory: int8 and NF4 weights, gradient checkpointing, and the eval-only mode."""
import re

import pytest
import torch
import torch.nn as nn

import gpt
import quant
from conftest import TINY, one_line_error, run, val_lines

# QLoRA's NF4 table as published (bitsandbytes' values)
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def model(seed=0, dropout=0.0, bias=False):
    torch.manual_seed(seed)
    return gpt.GPT(65, 32, 2, 2, 64, dropout, rope=True, rmsnorm=True, qk_norm=True, bias=bias)


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


@pytest.mark.parametrize('bias', [False, True])  # the lecture's model has biases: they stay as they are
@pytest.mark.parametrize('kind, bound', [('int8', 0.05), ('nf4', 0.3)])  # weights off by ~0.7% (int8: and its
def test_quantized_logits_are_close_to_fp32(kind, bound, bias):  # activations rounded on the fly) and ~9%
    m = model(bias=bias).eval()
    for name, p in m.named_parameters():  # trained weights are far from init; give them (and biases) some spread
        p.data += (0.05 if p.dim() > 1 else 0.5 if name.endswith('bias') else 0.0) * torch.randn_like(p)
    idx = torch.randint(65, (4, 32))
    with torch.no_grad():
        ref = m(idx, idx)[0]
        fp32 = quant.weight_bytes(m)
        quant.quantize_model(m, kind)
        logits = m(idx, idx)[0]
    assert (logits - ref).norm() / ref.norm() < bound
    assert fp32 / quant.weight_bytes(m) > {'int8': 3.7, 'nf4': 7.0}[kind] - 0.5 * bias  # scales (and biases) cost a little


@pytest.mark.parametrize('kind', ['int8', 'nf4'])
def test_cached_equals_uncached_under_quantization(kind):
    m = model().eval()
    quant.quantize_model(m, kind)
    prompt = torch.randint(65, (3, 5))
    a, b = (m.generate(prompt, 25, 1.0, kv_cache=c, generator=torch.Generator().manual_seed(1)) for c in (True, False))
    assert torch.equal(a, b)


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
    (['--quantize=int4'], "quantize must be '', 'int8' or 'nf4'"),
    (['--gradient_checkpointing=maybe'], 'not a valid bool'),
    (['--gradient_checkpointing=2'], 'not a valid bool'),
    (['--eval_only=true'], 'eval_only needs a model'),
])
def test_memory_knobs_refuse_bad_values(proj, args, message):
    assert message in one_line_error(run(proj, 'gpt.py', *TINY, *args))
