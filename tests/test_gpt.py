"""gpt.py: the model's properties, sampling, the schedule and checkpoints, on the real classes."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import gpt
from tokenizer import CharTokenizer

V = 11


def tiny(dropout=0.0, block_size=16, n_layer=2, n_head=2, n_embd=16, seed=0, **parts):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(V, block_size, n_layer, n_head, n_embd, dropout, **parts))


def set_sdpa(model, on):
    for block in model.blocks:
        block.attn.use_sdpa = on


def test_shapes():
    model = tiny()
    idx = torch.randint(V, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, V) and loss.shape == ()
    logits, loss = model(idx)
    assert logits.shape == (3, 1, V) and loss is None  # sampling needs only the last position


@pytest.mark.parametrize('sdpa', [True, False])
def test_causal(sdpa):
    model = tiny().eval()
    set_sdpa(model, sdpa)
    idx = torch.randint(V, (2, 16))
    base = model(idx, idx)[0]
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        logits = model(changed, idx)[0]
        assert torch.allclose(logits[:, :t], base[:, :t], atol=1e-6)  # the past does not see the future
        assert not torch.allclose(logits[:, t:], base[:, t:], atol=1e-6)  # and the token itself matters


@pytest.mark.parametrize('sdpa', [True, False])
def test_without_the_causal_mask_a_position_sees_the_future(sdpa):
    idx = torch.randint(V, (2, 16))
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 1) % V
    for n_layer in (1, 2):
        model, unmasked = tiny(n_layer=n_layer).eval(), tiny(n_layer=n_layer, causal=False).eval()
        assert unmasked.state_dict().keys() == model.state_dict().keys()  # the mask is a rule, not weights
        set_sdpa(unmasked, sdpa)  # the fused kernel's is_causal has no off switch here: attention() serves
        assert not torch.allclose(unmasked(changed, idx)[0][:, :15], unmasked(idx, idx)[0][:, :15], atol=1e-6)
        # the last position sees the whole window either way; with two blocks, the keys it reads in the
        # second block came from positions that saw the future, so even its prediction changes
        same_last = torch.allclose(unmasked(idx, idx)[0][:, -1], model(idx, idx)[0][:, -1], atol=1e-5)
        assert same_last == (n_layer == 1)


def test_initial_loss_is_about_ln_vocab():
    model = gpt.GPT(gpt.GPTConfig(65, 32, 4, 4, 64, 0.0))
    idx = torch.randint(65, (16, 32))
    assert model(idx, idx.roll(1, dims=1))[1].item() == pytest.approx(math.log(65), abs=0.1)


def test_overfits_one_batch():
    model = tiny(dropout=0.1)
    idx = torch.randint(V, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(idx[:, :-1], idx[:, 1:])[1].item()
    for _ in range(200):
        loss = model(idx[:, :-1], idx[:, 1:])[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert first > 2.0 and model(idx[:, :-1], idx[:, 1:])[1].item() < 0.05


def test_sdpa_agrees_with_explicit_attention():
    model = tiny().eval()
    idx = torch.randint(V, (3, 16))
    fast = model(idx, idx)[0]
    set_sdpa(model, False)
    assert torch.allclose(fast, model(idx, idx)[0], atol=1e-5)
    # and with a cache, where there are more keys than queries
    for sdpa in (True, False):
        set_sdpa(model, sdpa)
        cache = gpt.KVCache(2, 3, 2, 16, 8, 'cpu', torch.float32)
        model(idx[:, :10], cache=cache)
        logits = model(idx[:, 10:13], cache=cache)[0]
        assert torch.allclose(logits[:, -1], fast[:, 12], atol=1e-5)


def test_cpu_attention_runs_in_fp32_under_bf16_autocast(monkeypatch):
    # torch's fused bf16 attention backward on a CPU is several times slower than fp32's, so gpt.py gives it
    # fp32 even under autocast; the rest of the model still runs in bf16
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda q, k, v, **kw: seen.append((q.dtype, k.dtype, v.dtype)) or sdpa(q, k, v, **kw))
    model = tiny()
    idx = torch.randint(V, (3, 16))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    loss.backward()
    assert seen == [(torch.float32,) * 3] * 2 and logits.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize('temperature, top_k, top_p', [(1.0, 0, 1.0), (0.8, 5, 0.9), (0.0, 0, 1.0)])
def test_cached_generation_equals_uncached(temperature, top_k, top_p):
    model = tiny(block_size=32).eval()
    prompt = torch.randint(V, (3, 5))
    outs = [gpt.generate(model, prompt, 27, temperature, top_k, top_p, kv_cache=c,
                           generator=torch.Generator().manual_seed(1)) for c in (True, False)]
    assert outs[0].shape == (3, 32) and torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0][:, :5], prompt)  # the output starts with the prompt


def test_generation_beyond_block_size():
    model = tiny(block_size=8).eval()
    for prompt_len in (3, 20):  # a prompt inside and one longer than the block
        prompt = torch.randint(V, (2, prompt_len))
        for cache in (True, False):
            out = gpt.generate(model, prompt, 30, 1.0, kv_cache=cache, generator=torch.Generator().manual_seed(0))
            assert out.shape == (2, prompt_len + 30)
    # after the cache is rebuilt, the next logits are those of the last block_size // 2 tokens
    idx = torch.randint(V, (1, 9))
    cache = gpt.KVCache(2, 1, 2, 8, 8, 'cpu', torch.float32)
    model(idx[:, 1:], cache=cache)  # 8 positions: full
    rebuilt = gpt.KVCache(2, 1, 2, 8, 8, 'cpu', torch.float32)
    assert torch.allclose(model(idx[:, -4:], cache=rebuilt)[0], model(idx[:, -4:])[0], atol=1e-6)


@pytest.mark.parametrize('block_size', [1, 2, 3])
def test_cached_generation_with_the_smallest_blocks(block_size):
    # the cache is rebuilt from the last max(block_size // 2, 1) tokens: still the uncached tokens
    model = tiny(block_size=block_size).eval()
    prompt = torch.randint(V, (2, 1))
    outs = [gpt.generate(model, prompt, 12, 1.0, kv_cache=c, generator=torch.Generator().manual_seed(3))
            for c in (True, False)]
    assert outs[0].shape == (2, 13) and (block_size > 1 or torch.equal(outs[0], outs[1]))


@pytest.mark.parametrize('kv_cache', [True, False])
def test_greedy_samples_in_a_batch_equal_each_drawn_alone(kv_cache):
    """--num_samples=N is one batch: row i of a greedy batch is the sample drawn alone, through the
    cache and past block_size (the cache rebuilt)."""
    model = tiny(block_size=16).eval()
    prompts = torch.randint(V, (4, 5))
    batch = gpt.generate(model, prompts, 40, temperature=0, kv_cache=kv_cache)
    for row in range(4):
        assert torch.equal(batch[row], gpt.generate(model, prompts[row:row + 1], 40, temperature=0,
                                                    kv_cache=kv_cache)[0])


def test_a_sampled_batch_is_seeded():
    model = tiny().eval()
    prompt = torch.randint(V, (1, 3)).expand(4, 3)
    a, b = (gpt.generate(model, prompt, 20, 1.0, generator=torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b) and len({tuple(row.tolist()) for row in a}) == 4  # the same batch, four samples


def test_greedy_is_deterministic():
    model = tiny().eval()
    prompt = torch.randint(V, (2, 4))
    a, b = (gpt.generate(model, prompt, 12, temperature=0) for _ in range(2))
    assert torch.equal(a, b)


def test_sampling_knobs():
    torch.manual_seed(0)
    logits = torch.randn(4, V)
    best = logits.argmax(-1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(gpt.sample_next(logits, 0.0), best)  # temperature 0 is greedy, not a division by 0
    assert torch.equal(gpt.sample_next(logits, 1.0, top_k=1, generator=g), best)
    assert torch.equal(gpt.sample_next(logits, 1.0, top_p=1e-6, generator=g), best)  # the top token stays
    assert gpt.sample_next(logits, 1.0, top_k=10 * V, generator=g).shape == (4, 1)  # k above vocab is fine
    top3 = logits.topk(3).indices
    draws = torch.cat([gpt.sample_next(logits, 2.0, top_k=3, generator=g) for _ in range(200)], dim=1)
    assert all(set(draws[r].tolist()) <= set(top3[r].tolist()) for r in range(4))
    assert all(len(set(draws[r].tolist())) == 3 for r in range(4))  # all three are reachable
    # top_p keeps the fewest tokens whose probabilities add up to top_p
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    draws = torch.cat([gpt.sample_next(probs.log(), 1.0, top_p=0.75, generator=g) for _ in range(300)], dim=1)
    assert set(draws.flatten().tolist()) == {0, 1}


def test_lr_schedule():
    lr = lambda it, progress, warmup=10: gpt.get_lr(it, progress, 1e-3, 1e-4, warmup)
    assert lr(0, 0.0) > 0  # never 0 at step 0
    assert lr(9, 0.0) < 1e-3 and lr(10, 0.0) == pytest.approx(1e-3)
    assert lr(50, 0.5) == pytest.approx(5.5e-4) and lr(100, 1.0) == pytest.approx(1e-4)
    assert lr(1000, 3.0) == pytest.approx(1e-4)  # past the end it stays at min_lr
    assert lr(0, 0.0, warmup=0) == pytest.approx(1e-3)


def test_checkpoint_round_trip(tmp_path):
    model = tiny()
    path = str(tmp_path / 'ckpt.pt')
    chars = [chr(ord('a') + i) for i in range(V)]
    gpt.save_checkpoint(path, {'model_type': 'gpt', 'model': model.state_dict(), 'chars': chars, 'model_args': {},
                               'rng': {'torch': torch.get_rng_state()}, 'config': {'dropout': 0.0}})
    ckpt = gpt.load_checkpoint(path, 'gpt', CharTokenizer(chars))  # an older checkpoint: 'chars', no 'tokenizer'
    other = tiny(seed=1)
    other.load_state_dict(ckpt['model'])
    idx = torch.randint(V, (2, 16))
    assert torch.equal(other(idx, idx)[0], model(idx, idx)[0])
    assert not (tmp_path / 'ckpt.pt.tmp').exists()


def test_full_val_loss_matches_the_mean_over_windows():
    model = tiny(block_size=8)
    data = np.random.default_rng(0).integers(0, V, size=45).astype(np.uint16)
    tensor = torch.from_numpy(data.astype(np.int64))
    # windows 0-8, 8-16, ... 40-44: 44 predictions in all
    nll = sum(model(tensor[None, s:min(s + 8, 44)], tensor[None, s + 1:min(s + 9, 45)])[1].item() * (min(s + 8, 44) - s)
              for s in range(0, 44, 8))
    loss, _, count = gpt.full_val_loss(model, gpt.Split(data), 8, 'cpu', batch_size=2)
    assert count == 44 and loss == pytest.approx(nll / 44, rel=1e-5)


# The lecture's parts: each switch leaves one part out, and the defaults are the model as it was
TODAYS_KEYS = ['wte.weight', 'wpe.weight', 'blocks.0.ln_1.weight', 'blocks.0.ln_1.bias', 'blocks.0.attn.c_attn.weight',
               'blocks.0.attn.c_proj.weight', 'blocks.0.ln_2.weight', 'blocks.0.ln_2.bias', 'blocks.0.mlp.c_fc.weight',
               'blocks.0.mlp.c_proj.weight', 'ln_f.weight', 'ln_f.bias', 'lm_head.weight']


def test_default_parts_are_the_model_as_it_was():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(11, 8, 1, 2, 16))
    assert list(model.state_dict()) == TODAYS_KEYS  # old checkpoints load with strict keys
    # the logits of this seed before the lecture's switches existed (gpt.py of the previous commit)
    assert model(torch.arange(8)[None] % 11)[0].sum().item() == pytest.approx(-0.022893, abs=1e-6)


@pytest.mark.parametrize('parts, gone', [
    (dict(ffn=False), ['mlp.', 'ln_2.']),
    (dict(norm=False), ['ln_1.', 'ln_2.', 'ln_f.']),
    (dict(pos=False), ['wpe.']),
    (dict(pos=False, rope=True), ['wpe.', 'rope_']),
])
def test_a_part_left_out_has_no_weights(parts, gone):
    model = gpt.GPT(gpt.GPTConfig(V, 8, 2, 2, 16, **parts))
    names = [*model.state_dict(), *dict(model.named_buffers())]
    assert not [n for n in names if any(g in n for g in gone)]
    assert [n for n in names if 'attn.c_attn' in n]  # attention stays


def test_bias_puts_a_bias_in_every_linear_and_the_head():
    model = gpt.GPT(gpt.GPTConfig(V, 8, 2, 2, 16, bias=True, tie_weights=False))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 9 and all(m.bias is not None for m in linears)  # 4 per block and the head
    assert all((m.bias == 0).all() for m in linears)  # nanoGPT's init zeroes them
    assert all(m.bias is None for m in gpt.GPT(gpt.GPTConfig(V, 8, 2, 2, 16)).modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize('parts', [dict(ffn=False, residual=False, norm=False, weight_init='pytorch'),
                                   dict(residual=False),
                                   dict(bias=True, relu=True, weight_init='pytorch'), dict(pos=False)])
@pytest.mark.parametrize('sdpa', [True, False])
def test_causal_with_parts_left_out(parts, sdpa):
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(V, 16, 2, 2, 16, **parts)).eval()
    set_sdpa(model, sdpa)
    idx = torch.randint(V, (2, 16))
    base = model(idx, idx)[0]
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % V
    logits = model(changed, idx)[0]
    assert torch.allclose(logits[:, :9], base[:, :9], atol=1e-6) and not torch.allclose(logits[:, 9:], base[:, 9:])


def test_without_positions_attention_sees_a_bag_of_tokens():
    torch.manual_seed(0)
    idx = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    shuffled = torch.tensor([[3, 1, 7, 2, 6, 4, 5, 8]])  # the same tokens before the last one, in another order
    for pos, same in ((False, True), (True, False)):  # one layer: in a second, earlier positions saw their own order
        model = gpt.GPT(gpt.GPTConfig(V, 8, 1, 2, 16, pos=pos)).eval()
        last = [model(x)[0][0, -1] for x in (idx, shuffled)]
        assert torch.allclose(last[0], last[1], atol=1e-5) == same


def test_weight_init_pytorch_is_the_lectures():
    torch.manual_seed(0)
    lecture, nanogpt = gpt.GPT(gpt.GPTConfig(V, 8, 1, 2, 32, weight_init='pytorch')), gpt.GPT(gpt.GPTConfig(V, 8, 1, 2, 32))
    assert lecture.wte.weight.std().item() == pytest.approx(1.0, rel=0.2)  # nn.Embedding's N(0, 1)
    assert nanogpt.wte.weight.std().item() == pytest.approx(0.02, rel=0.2)
    bound = 1 / math.sqrt(32)  # nn.Linear's kaiming-uniform: |w| <= 1/sqrt(fan_in)
    assert lecture.blocks[0].mlp.c_fc.weight.abs().max() <= bound
    h = torch.randn(64)
    for kw, fn in (({'relu': True}, torch.relu), ({'relu2': True}, lambda t: torch.relu(t) ** 2),
                   ({'gelu_tanh': True}, lambda t: F.gelu(t, approximate='tanh')), ({}, F.gelu)):
        assert torch.equal(gpt.FeedForward(gpt.GPTConfig(1, 1, 1, 1, 4, **kw)).act(h), fn(h)), kw


def test_attention_weights_of_the_explicit_path():
    model = tiny().eval()
    set_sdpa(model, False)
    model(torch.randint(V, (1, 10)))
    att = model.blocks[1].attn.att  # (B, nh, T, T)
    assert att.shape == (1, 2, 10, 10) and torch.allclose(att.sum(-1), torch.ones(1, 2, 10))
    assert (att.triu(1) == 0).all()  # nothing looks ahead


def test_newton_schulz_in_bf16_is_the_fp32_update_within_a_few_percent():
    # Muon runs Newton-Schulz in bf16 where roads.py timed it faster
    import muon
    torch.manual_seed(0)
    for shape in ((384, 128), (128, 128), (128, 512)):
        G = torch.randn(*shape)
        fp32, bf16 = muon.newton_schulz(G), muon.newton_schulz(G.bfloat16()).float()
        assert bf16.shape == shape and ((bf16 - fp32).norm() / fp32.norm()).item() < 0.05
        s = torch.linalg.svdvals(fp32)
        assert 0.1 < s.min() and s.max() < 1.25  # singular values pushed towards 1, in both
        assert torch.linalg.svdvals(bf16).max() < 1.25


@pytest.mark.parametrize('ffn', [True, False])
def test_without_attention_each_position_sees_only_itself(ffn):
    """attention=False: a block is its feed-forward network alone (or, without one either, passes x on), so each
    position's logits come from its own token and position: changing every earlier token changes nothing."""
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(V, 16, 2, 2, 16, attention=False, ffn=ffn)).eval()
    assert all(block.attn is None for block in model.blocks)
    idx = torch.randint(V, (2, 16))
    changed = idx.clone()
    changed[:, :15] = (changed[:, :15] + 1) % V  # every position but the last
    logits, other = model(idx, idx)[0], model(changed, idx)[0]
    assert torch.allclose(logits[:, -1], other[:, -1], atol=1e-6)
    assert not torch.allclose(logits[:, :15], other[:, :15])
    with torch.no_grad():  # and sampling, with or without the cache, gives what the full forward gives
        a, b = (gpt.generate(model, idx[:, :4], 10, temperature=0, kv_cache=c) for c in (True, False))
    assert torch.equal(a, b)
