"""look.py: one HTML page per model, whose numbers are the model's own (per-token loss, top 5, attention,
the logit lens, the run's health), for every kind of model the project makes or loads; and, in a real
browser (Debian's chromium), pointing at a token shows them."""
import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, one_line_error, run

import gpt
import look
from checkpoint import load_checkpoint
from loading import full_weights
from tokenizer import description_in, from_description


def page_of(path):
    html = path.read_text(encoding='utf-8')
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return html, json.loads(found.group(1))


def model_of(ckpt_path):
    """The checkpoint's model (LoRA merged), in float32, with the explicit attention that keeps its weights."""
    ckpt = load_checkpoint(str(ckpt_path), 'gpt')
    tok = from_description(description_in(ckpt))
    model = gpt.GPT(gpt.GPTConfig(**ckpt['model_args'])).eval()
    model.load_state_dict(full_weights(str(ckpt_path), ckpt, tok, None, gpt.GPT))
    for block in model.blocks:
        block.attn.use_sdpa = False
    return model, tok


def check_numbers(page, model):
    """The page's numbers against the model's: losses, top 5, attention, the logit lens."""
    tokens = page['tokens']
    ids = [t['id'] for t in tokens]
    scored = [t for t in tokens if 'loss' in t]
    # the per-token losses average to full_val_loss's over the same tokens
    split = gpt.Split(np.array(ids + [tokens[-1]['next']] if 'next' in tokens[-1] else ids, dtype=np.int64))
    loss, _, count = gpt.full_val_loss(model, split, len(split.ids) - 1, 'cpu', 4)
    assert count == len(scored)
    assert np.mean([t['loss'] for t in scored]) == pytest.approx(loss, abs=1e-4) == pytest.approx(page['mean_loss'], abs=1e-4)
    model.eval()  # full_val_loss leaves a model in training mode
    with torch.no_grad():
        probs = F.softmax(model(torch.tensor([ids]), torch.tensor([ids]))[0][0].float(), dim=-1)  # (T, vocab)
    att = torch.stack([b.attn.att[0] for b in model.blocks])  # (n_layer, n_head, T, T)
    rows = look.attention_of(page, len(ids))
    for t, tk in enumerate(tokens):
        top = probs[t].topk(5)
        assert [j for j, _ in tk['top']] == top.indices.tolist(), (t, tk['top'], top.values.tolist())
        assert [p for _, p in tk['top']] == pytest.approx(top.values.tolist(), abs=1e-5)
        # the last block's logit lens is the model's own output
        assert tk['lens'][-1][0][0] == tk['top'][0][0] and tk['lens'][-1][0][1] == pytest.approx(tk['top'][0][1], abs=1e-4)
        # each attention row: the model's weights to 1/510 (stored as bytes), adding up to 1
        width = t + 1 if page['causal'] else len(ids)
        assert rows[t].shape == (page['n_layer'] * page['n_head'], width)
        assert np.abs(rows[t] - att[:, :, t, :width].flatten(0, 1).numpy()).max() <= 0.5 / 255 + 1e-6
        assert np.abs(rows[t].sum(1) - 1).max() <= width * 0.5 / 255 + 1e-6
    if page['causal']:
        assert (att.triu(1) == 0).all()  # nothing above the diagonal to store
    else:
        assert att.triu(1).sum() > 0.1 * len(ids)  # later tokens seen
    # each head's habits: shares of its attention, and an even spread's are what arithmetic says
    habits = page['heads']
    assert np.array(habits['self']).shape == (page['n_layer'], page['n_head'])
    assert 0 < np.min(habits['previous']) and np.max(np.array(habits['self']) + habits['previous']) <= 1 + 1e-6
    T = model.block_size
    if page['causal']:
        assert habits['uniform_previous'] == pytest.approx(np.mean([1 / (t + 1) for t in range(1, T)]))


def test_the_page_holds_the_models_own_numbers_and_its_health(trained):
    proj, _ = trained
    r = run(proj, 'look.py', 'out/ckpt.pt', '--n_tokens=40')
    assert r.returncode == 0, r.stderr
    html, page = page_of(proj / 'out' / 'look.html')
    model, tok = model_of(proj / 'out' / 'ckpt.pt')
    assert len(page['tokens']) == 16  # cropped to the model's context (block_size 16)
    check_numbers(page, model)
    assert page['what']['step'] == 20 and page['what']['tokenizer'].startswith('char')
    assert re.search(rf"whole-split val loss {page['what']['whole_val_loss']:.4f}",
                     run(proj, 'gpt.py', *TINY, '--init_from=out/ckpt.pt', '--eval_only=true').stdout)
    health = page['health']
    assert health['eval']['iter'] == [0, 10, 20] and len(health['train']['grad_norm']) == 4
    assert all(v > 0 for v in health['train']['update_ratio'])
    assert not re.search(r'\b(src|href)=', html)  # nothing to fetch: the page works offline


def test_a_prompt_is_its_own_text_and_its_last_token_has_no_true_next(trained):
    proj, _ = trained
    r = run(proj, 'look.py', 'out/ckpt.pt', '--prompt=First Citizen', '--out=first.html')
    assert r.returncode == 0, r.stderr
    _, page = page_of(proj / 'first.html')
    assert ''.join(page['vocab'][str(t['id'])] for t in page['tokens']) == 'First Citizen'
    assert 'loss' not in page['tokens'][-1] and all('loss' in t for t in page['tokens'][:-1])


def test_bad_input_is_refused_in_one_line(trained):
    proj, _ = trained
    assert 'give one model' in one_line_error(run(proj, 'look.py'))
    assert 'not in the model' in one_line_error(run(proj, 'look.py', 'out/ckpt.pt', '--prompt=\u2603\u2603'))
    assert '.html' in one_line_error(run(proj, 'look.py', 'out/ckpt.pt', '--out=out/ckpt.pt'))
    assert 'missing.pt' in one_line_error(run(proj, 'look.py', 'out/missing.pt'))


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['lecture', 'no_pos', 'no_causal', 'no_residual', 'lora', 'int8', 'nf4', 'bpe'])
def test_every_kind_of_model_gets_its_page(trained, kind):
    """The lecture's parts, positions off, no causal mask, no residuals, LoRA (merged), int8 and NF4 weights, BPE."""
    proj, _ = trained
    train = {'lecture': ['--rope=false', '--rmsnorm=false', '--qk_norm=false', '--bias=true', '--tie_weights=false'],
             'no_pos': ['--pos=false'], 'no_causal': ['--causal=false'], 'no_residual': ['--residual=false'],
             'bpe': ['--dataset=bpe']}.get(kind, [])
    ckpt = f'{kind}/ckpt.pt'
    if kind == 'bpe':
        assert run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', '--tokenizer=bpe', '--vocab_size=300',
                   '--dataset=bpe').returncode == 0
    if kind == 'lora':
        r = run(proj, 'gpt.py', *TINY, '--init_from=out/ckpt.pt', '--lora_rank=4', '--max_iters=10', f'--out_dir={kind}')
    elif kind in ('int8', 'nf4'):
        ckpt = 'out/ckpt.pt'
        r = subprocess.CompletedProcess([], 0)
    else:
        r = run(proj, 'gpt.py', *TINY, *train, '--max_iters=10', f'--out_dir={kind}')
    assert r.returncode == 0, r.stderr
    quantize = [f'--quantize={kind}'] if kind in ('int8', 'nf4') else []
    r = run(proj, 'look.py', ckpt, *quantize, f'--out={kind}.html')
    assert r.returncode == 0, r.stderr
    _, page = page_of(proj / f'{kind}.html')
    if quantize:  # the numbers of the quantized model: its losses differ from the float model's
        assert page['what']['quantize'] == kind
        assert page['mean_loss'] != pytest.approx(page_of_float(proj)['mean_loss'], abs=1e-7)
        return
    model, _ = model_of(proj / ckpt)
    check_numbers(page, model)


def page_of_float(proj):
    r = run(proj, 'look.py', 'out/ckpt.pt', '--out=float.html')
    assert r.returncode == 0, r.stderr
    return page_of(proj / 'float.html')[1]


def chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_a_gpt2_shaped_folder_gets_its_page_under_5_mb(prepared, tmp_path):
    """A GPT-2 folder (6 blocks of GPT-2's width, random weights, made by transformers) on data of its own tokens:
    the page of 256 tokens, every head's attention in it, stays under 5 MB."""
    pytest.importorskip('transformers')
    from conftest import copy_project
    from gpt2_folder import make
    proj = copy_project(prepared, tmp_path)
    text = (proj.parent / 'corpus.txt').read_text() * 30  # long enough for 256 tokens in the val split
    (tmp_path / 'g2.txt').write_text(text)
    make(tmp_path / 'gpt2-shaped', text, vocab_size=400, n_layer=6, n_head=12, n_embd=768, n_positions=256)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "g2.txt"}', '--dataset=g2',
               f'--tokenizer_from={tmp_path / "gpt2-shaped"}').returncode == 0
    r = run(proj, 'look.py', str(tmp_path / 'gpt2-shaped'), '--dataset=g2', '--windows=2', '--out=g2.html')
    assert r.returncode == 0, r.stderr
    html, page = page_of(proj / 'g2.html')
    assert len(page['tokens']) == 256 and page['n_layer'] == 6 and page['n_head'] == 12
    assert page['what']['step'] is None and page['health'] == {}
    assert len(html.encode()) < 5 * 2**20


@pytest.mark.slow
def test_pointing_at_a_token_in_a_real_browser_shows_its_numbers(trained):
    """Headless Chromium opens the page from disk, with every host unreachable; #token=N moves the mouse over
    token N (the page's own mouseover handler); the DOM it leaves holds the top 5 and the attention drawn over
    the text, which must be the page's (and so the model's) numbers."""
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here: `apt-get install chromium` (.ci/run installs it where it can)")
    proj, _ = trained
    assert run(proj, 'look.py', 'out/ckpt.pt').returncode == 0
    _, page = page_of(proj / 'out' / 'look.html')
    t, layer, head = 9, 1, 1
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, '--headless', '--no-sandbox', '--disable-gpu', f'--user-data-dir={profile}',
                              '--host-resolver-rules=MAP * ~NOTFOUND', '--proxy-server=127.0.0.1:9', '--dump-dom',
                              f"file://{proj / 'out' / 'look.html'}#token={t}&layer={layer}&head={head}"],
                             capture_output=True, text=True, timeout=120).stdout
    shown = re.findall(r'<li data-id="(\d+)" data-p="([\d.e-]+)">', dom)
    assert [(int(i), float(p)) for i, p in shown] == [tuple(x) for x in page['tokens'][t]['top']]
    att = [float(a) for a in re.findall(r'<span [^>]*data-att="([\d.]+)"', dom)]
    row = look.attention_of(page, len(page['tokens']))[t][layer * page['n_head'] + head]
    assert len(att) == len(page['tokens']) and att[:t + 1] == pytest.approx(row, abs=1e-4)
    assert all(a == 0 for a in att[t + 1:])  # the causal mask: nothing after the pointed token
    assert 'true next: ' in dom and re.search(rf'<span[^>]*data-t="{t}"[^>]*class="[^"]*\bon\b', dom)
    # the logit lens: a row for each block, its top guess the page's (and the last block's, the model's own)
    lens = re.findall(r'<tr><td>after block (\d+)</td><td>(.*?) (\d+)%</td>', dom)
    assert [int(block) for block, _, _ in lens] == list(range(page['n_layer']))
    tops = [page['tokens'][t]['lens'][layer][0] for layer in range(page['n_layer'])]
    assert all(abs(100 * p - int(pct)) <= 0.5 + 1e-6 for (_, p), (_, _, pct) in zip(tops, lens))
