"""Fine-tuning: init_from=PATH, --tokenizer_from, LoRA and QLoRA, on the real classes and the real scripts."""
import os
import re

import pytest
import torch

import gpt
import lora
import quant
from conftest import TINY, copy_project, one_line_error, run, val_lines

NEW_TEXT = "all: speak, speak. you are all resolved rather to die than to famish?\n" * 60  # lowercase, same chars


def base_model(seed=0, bias=False):
    torch.manual_seed(seed)
    return gpt.GPT(gpt.GPTConfig(65, 32, 2, 2, 32, 0.0, rope=True, rmsnorm=True, qk_norm=True, bias=bias))


def test_lora_starts_as_the_base_and_trains_only_a_and_b():
    m = base_model()
    idx = torch.randint(65, (3, 32))
    before = m(idx, idx)[0].detach()
    lora.add_lora(m, rank=4, alpha=8.0)
    assert torch.equal(m(idx, idx)[0], before)  # B = 0: step 0 is exactly the base
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(('lora_A', 'lora_B')) for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # A and B for c_attn, c_proj, c_fc, c_proj in 2 blocks
    old = {n: t.clone() for n, t in m.state_dict().items()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m(idx, idx.roll(-1, 1))[1].backward()
    opt.step()
    changed = {n for n, t in m.state_dict().items() if not torch.equal(t, old[n])}
    assert changed and all(n.endswith(('lora_A', 'lora_B')) for n in changed)
    assert any(n.endswith('lora_B') for n in changed)


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('quantize', ['', 'nf4'])
def test_merged_equals_unmerged(quantize, bias):
    m = base_model(bias=bias).eval()
    for name, p in m.named_parameters():
        if name.endswith('bias'):
            p.data.normal_(0, 0.5)  # as if trained: a merge that dropped them would show
    if quantize:
        quant.quantize_model(m, quantize)
    lora.add_lora(m, rank=4, alpha=8.0)
    for name, p in m.named_parameters():
        if name.endswith('lora_B'):
            p.data.normal_(0, 0.05)  # as if trained
    idx = torch.randint(65, (2, 32))
    unmerged = m(idx, idx)[0].detach()
    lora.merge_lora(m)
    assert not any(isinstance(x, lora.LoRALinear) for x in m.modules())
    assert torch.allclose(m(idx, idx)[0], unmerged, atol=1e-5)


@pytest.fixture(scope='session')
def base_once(prepared, tmp_path_factory):
    """Once per session: a trained base model in out/, and the new text prepared with its tokenizer as
    dataset 'new'."""
    tmp_path = tmp_path_factory.mktemp('base')
    proj = copy_project(prepared, tmp_path)
    assert run(proj, 'gpt.py', *TINY, '--max_iters=20').returncode == 0
    (tmp_path / 'new.txt').write_text(NEW_TEXT)
    r = run(proj, 'prepare.py', f'--input={tmp_path / "new.txt"}', '--dataset=new', '--tokenizer_from=shakespeare_char')
    assert r.returncode == 0, r.stderr
    return proj


@pytest.fixture
def base(base_once, tmp_path):
    """The test's own copy of the base project."""
    return copy_project(base_once, tmp_path)


def test_full_fine_tune_from_a_path(base):
    source = (base / 'out' / 'ckpt.pt').read_bytes()
    args = [*TINY, '--init_from=out/ckpt.pt', '--dataset=new', '--max_iters=20', '--lr_decay_iters=30', '--dropout=0.1']
    r = run(base, 'gpt.py', *args, '--out_dir=ft')
    assert r.returncode == 0, r.stderr
    assert val_lines(r.stdout)[0].startswith('step 0:') and (base / 'out' / 'ckpt.pt').read_bytes() == source
    ckpt = torch.load(base / 'ft' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 20 and ckpt['config']['dataset'] == 'new' and 'lora' not in ckpt
    # --init_from=resume continues a fine-tune exactly
    resumed = run(base, 'gpt.py', *args[:-3], '--init_from=resume', '--dataset=new', '--max_iters=30',
                  '--lr_decay_iters=30', '--dropout=0.1', '--out_dir=ft')
    straight = run(base, 'gpt.py', *args[:-3], '--dataset=new', '--max_iters=30', '--lr_decay_iters=30',
                   '--dropout=0.1', '--out_dir=ft2', '--init_from=out/ckpt.pt')
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]
    # fine-tuning into the folder that holds the source would write over it
    msg = one_line_error(run(base, 'gpt.py', *args, '--out_dir=out'))
    assert "lies in this run's --out_dir=out" in msg and (base / 'out' / 'ckpt.pt').read_bytes() == source


def test_lora_checkpoint_is_small_resumes_exactly_and_guards_its_base(base):
    args = [*TINY, '--init_from=out/ckpt.pt', '--dataset=new', '--lora_rank=2', '--lora_alpha=4',
            '--lr_decay_iters=30', '--learning_rate=1e-2', '--dropout=0.1', '--out_dir=lora']
    r = run(base, 'gpt.py', *args, '--max_iters=20')
    assert r.returncode == 0, r.stderr
    assert re.search(r'LoRA rank 2: training [\d,]+ of [\d,]+ parameters \(\d+\.\d+%\)', r.stdout)
    ckpt = torch.load(base / 'lora' / 'ckpt.pt', weights_only=True)
    assert set(ckpt['model']) and all('lora_' in k for k in ckpt['model'])
    # named from the run's folder, so that the folder can be copied or moved whole
    assert ckpt['base']['path'] == os.path.join('base', 'ckpt.pt') and len(ckpt['base']['sha256']) == 64
    assert ckpt['base']['from'] == os.path.abspath(base / 'out' / 'ckpt.pt')
    assert os.path.samefile(base / 'lora' / 'base' / 'ckpt.pt', base / 'out' / 'ckpt.pt')  # a link, not a copy
    assert os.path.getsize(base / 'lora' / 'ckpt.pt') < os.path.getsize(base / 'out' / 'ckpt.pt') / 2
    resumed = run(base, 'gpt.py', *args[:1], *args[2:], '--init_from=resume', '--max_iters=30')
    straight = run(base, 'gpt.py', *args, '--max_iters=30', '--out_dir=lora2')
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]
    # eval_only and sampling load the base; a merged ordinary checkpoint evaluates the same
    ev = run(base, 'gpt.py', '--init_from=resume', '--out_dir=lora', '--dataset=new', '--eval_only=true')
    ex = run(base, 'gpt.py', '--init_from=lora/ckpt.pt', '--max_iters=0', '--export=true', '--dataset=new', '--out_dir=merged',
             '--max_new_tokens=5')
    assert ev.returncode == 0 and ex.returncode == 0, ev.stderr + ex.stderr
    merged = torch.load(base / 'merged' / 'ckpt.pt', weights_only=True)
    assert 'lora' not in merged and not any('lora_' in k for k in merged['model'])
    ev2 = run(base, 'gpt.py', '--init_from=resume', '--out_dir=merged', '--dataset=new', '--eval_only=true')
    line = lambda out: re.search(r'val bpb ([\d.]+)', out).group(1)
    assert line(ev.stdout) == line(ev2.stdout)
    # a later run in the base's out_dir replaces out/ckpt.pt; the LoRA run's own link keeps its base
    kept = base / 'lora' / 'base' / 'ckpt.pt'
    good = kept.read_bytes()
    assert run(base, 'gpt.py', *TINY, '--max_iters=10').returncode == 0  # out/ckpt.pt is now another model
    assert (base / 'out' / 'ckpt.pt').read_bytes() != good and kept.read_bytes() == good
    again = run(base, 'gpt.py', '--init_from=resume', '--out_dir=lora', '--dataset=new', '--eval_only=true')
    assert again.returncode == 0 and line(again.stdout) == line(ev.stdout), again.stderr
    # a base that changed, or went missing, is refused
    kept.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert 'has changed' in one_line_error(run(base, 'gpt.py', '--init_from=resume', '--out_dir=lora', '--dataset=new',
                                               '--max_iters=0'))
    os.remove(kept)
    assert 'missing' in one_line_error(run(base, 'gpt.py', '--init_from=resume', '--out_dir=lora', '--dataset=new',
                                           '--eval_only=true'))
    kept.write_bytes(good)
    assert run(base, 'gpt.py', '--init_from=resume', '--out_dir=lora', '--dataset=new', '--eval_only=true').returncode == 0


def test_qlora_trains_end_to_end(base):
    r = run(base, 'gpt.py', *TINY, '--init_from=out/ckpt.pt', '--dataset=new', '--lora_rank=4', '--quantize=nf4',
            '--learning_rate=1e-2', '--max_iters=30', '--out_dir=qlora')
    assert r.returncode == 0, r.stderr
    assert 'LoRA rank 4 on a nf4 base' in r.stdout
    first, last = (float(re.search(r'val loss ([\d.]+)', l).group(1)) for l in val_lines(r.stdout)[::len(val_lines(r.stdout)) - 1])
    assert last < first  # the adapters learn on a frozen 4-bit base
    assert torch.load(base / 'qlora' / 'ckpt.pt', weights_only=True)['lora']['quantize'] == 'nf4'


def test_eval_only_from_the_checkpoint_in_out(base):
    # the README's "before" row: eval_only writes nothing, so out/ckpt.pt of this out_dir is fine to read
    before = (base / 'out' / 'ckpt.pt').read_bytes()
    r = run(base, 'gpt.py', '--init_from=out/ckpt.pt', '--dataset=new', '--eval_only=true')
    assert r.returncode == 0, r.stderr
    assert re.search(r'^whole-split val loss [\d.]+ \(', r.stdout, re.M) and not val_lines(r.stdout)
    assert (base / 'out' / 'ckpt.pt').read_bytes() == before


def test_fine_tune_checks_the_checkpoints_block_size(base, tmp_path):
    # val holds 30 tokens: shorter than the block_size knob (64), longer than the checkpoint's (16)
    (tmp_path / 'short.txt').write_text(NEW_TEXT[:300])
    assert run(base, 'prepare.py', f'--input={tmp_path / "short.txt"}', '--dataset=short',
               '--tokenizer_from=shakespeare_char').returncode == 0
    args = ['--init_from=out/ckpt.pt', '--dataset=short', '--out_dir=ft', '--batch_size=4', '--eval_iters=2']
    r = run(base, 'gpt.py', *args, '--max_iters=5', '--eval_interval=5', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    (tmp_path / 'tiny.txt').write_text(NEW_TEXT[:100])  # val holds 10 tokens: too short for the checkpoint
    assert run(base, 'prepare.py', f'--input={tmp_path / "tiny.txt"}', '--dataset=tiny',
               '--tokenizer_from=shakespeare_char').returncode == 0
    r = run(base, 'gpt.py', *args, '--dataset=tiny', '--max_iters=5')
    assert "the model's block_size (16)" in one_line_error(r)


def test_tokenizer_from_refuses_unknown_characters(base, tmp_path):
    (tmp_path / 'odd.txt').write_text('Zebras ~ quietly {jump} ' * 50)
    msg = one_line_error(run(base, 'prepare.py', f'--input={tmp_path / "odd.txt"}', '--dataset=odd',
                             '--tokenizer_from=shakespeare_char'))
    assert "['Z', 'b', 'j', 'q', 'y', '{', '}', '~']" in msg or "lacks: [" in msg
    for ch in 'Z~{}':
        assert repr(ch) in msg
    assert not (base / 'data' / 'odd').exists()


@pytest.mark.parametrize('args, message', [
    (['--lora_rank=-1', '--init_from=out/ckpt.pt'], 'lora_rank must be >= 0'),
    (['--lora_rank=4', '--lora_alpha=0', '--init_from=out/ckpt.pt'], 'lora_alpha must be > 0'),
    (['--lora_rank=4'], 'lora_rank > 0 adapts a trained model'),
    (['--init_from=nowhere/ckpt.pt'], "there is no 'nowhere/ckpt.pt'"),
    (['--init_from=data/new/meta.json'], 'not a loadable checkpoint'),
    (['--init_from=b.pt'], 'not a gpt checkpoint'),
    (['--init_from=resume', '--lora_rank=4'], 'not a LoRA run'),
])
def test_fine_tune_refusals(base, args, message):
    torch.save({'model_type': 'bigram', 'model': {}}, base / 'b.pt')
    before = (base / 'out' / 'ckpt.pt').read_bytes()
    assert message in one_line_error(run(base, 'gpt.py', *TINY, '--dataset=new', '--max_iters=40', '--out_dir=x', *args)
                                     if '--init_from=resume' not in args else
                                     run(base, 'gpt.py', *TINY, '--max_iters=40', *args))
    assert (base / 'out' / 'ckpt.pt').read_bytes() == before


def test_lora_summary_counts_a_quantized_base_as_its_weights():
    # "training N of M parameters": M is the same whether the frozen base is fp32 or 4-bit
    lines = []
    for quantize in ('', 'nf4'):
        m = base_model()
        n_base = sum(p.numel() for p in m.parameters())
        lora.adapt(m, {'rank': 4, 'alpha': 8.0, 'quantize': quantize})
        lines.append(lora.summary(m, {'rank': 4, 'quantize': quantize}))
        n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert f"training {n_train:,} of {n_base + n_train:,} parameters" in lines[-1]
    assert lines[1] == lines[0].replace('LoRA rank 4:', 'LoRA rank 4 on a nf4 base:')


def test_a_resumed_lora_run_keeps_its_settings(base):
    args = [*TINY, '--dataset=new', '--learning_rate=1e-2', '--max_new_tokens=0']
    assert run(base, 'gpt.py', *args, '--init_from=out/ckpt.pt', '--lora_rank=2', '--lora_alpha=4', '--max_iters=10',
               '--out_dir=lora').returncode == 0
    assert run(base, 'gpt.py', *args, '--init_from=out/ckpt.pt', '--lora_rank=2', '--quantize=nf4', '--max_iters=10',
               '--out_dir=qlora').returncode == 0
    for out, knob in (('lora', '--lora_rank=4'), ('lora', '--lora_alpha=8.0'), ('qlora', '--quantize=int8'),
                      ('qlora', "--quantize=''")):
        before = (base / out / 'ckpt.pt').read_bytes()
        for more in (['--max_iters=20'], ['--max_iters=0'], ['--eval_only=true']):
            msg = one_line_error(run(base, 'gpt.py', *args, '--init_from=resume', f'--out_dir={out}', knob, *more))
            assert msg.startswith(f"error: {knob.split('=')[0]}="), msg
        assert (base / out / 'ckpt.pt').read_bytes() == before
    # a plain LoRA model is merged, then quantized as asked
    r = run(base, 'gpt.py', *args, '--init_from=resume', '--out_dir=lora', '--eval_only=true', '--quantize=int8')
    assert r.returncode == 0 and 'to int8' in r.stdout, r.stderr
