"""Instruction tuning: pairs and their loss mask, the stop string, the tasks demo and its exact-match line."""
import contextlib
import csv
import json
import os
import re

import numpy as np
import pytest
import torch

import gpt
import instruct
from conftest import SHAKESPEARE, TINY, one_line_error, run, val_lines

WORDS = ['speak', 'famish', 'citizen', 'proceed', 'further', 'resolved', 'rather', 'than', 'hear', 'all']
PAIRS = [{'prompt': f'last: {a} {b}', 'response': b} for a, b in zip(WORDS, WORDS[3:] + WORDS[:3])] * 6


def write_jsonl(path, rows):
    path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows), encoding='utf-8')


def test_loss_counts_only_response_targets():
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 11, size=60).astype(np.uint16)
    mask = np.tile(np.array([0] * 4 + [1] * 6, dtype=np.uint8), 6)  # pairs: 4 prompt tokens, 6 response tokens
    split = instruct.PairSplit(ids, mask)
    assert split.starts.tolist() == list(range(0, 60, 10))
    model = gpt.GPT(gpt.GPTConfig(11, 16, 1, 1, 16))
    ix = torch.tensor([0, 10, 20])
    x, y = gpt.get_batch(split, ix, 16, 'cpu')
    loss = model(x, y)[1]
    changed = ids.copy()
    changed[[1, 2, 3, 11, 12]] = (changed[[1, 2, 3, 11, 12]] + 1) % 11  # targets at masked-out positions
    _, y2 = gpt.get_batch(instruct.PairSplit(changed, mask), ix, 16, 'cpu')
    assert torch.equal(model(x, y2)[1], loss)
    changed[5] = (changed[5] + 1) % 11  # a response target does count
    _, y3 = gpt.get_batch(instruct.PairSplit(changed, mask), ix, 16, 'cpu')
    assert model(x, y3)[1] != loss
    logits = model(x)[0] if False else model(x, y)[0]
    keep = y != -1
    manual = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    assert torch.allclose(loss, manual)


def test_stop_cuts_generation_cached_and_uncached():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(11, 32, 2, 2, 16)).eval()
    prompt = torch.randint(11, (1, 3))
    full = gpt.generate(model, prompt, 20, temperature=0)[0, 3:].tolist()
    target = full[5]  # stop at the first time this token comes out
    first = full.index(target)
    for cache in (True, False):
        out = gpt.generate(model, prompt, 20, temperature=0, kv_cache=cache, stop=lambda new: target in new)
        assert out[0, 3:].tolist() == full[:first + 1]


def test_pairs_dataset_and_refusals(proj, tmp_path):
    write_jsonl(tmp_path / 'p.jsonl', PAIRS)
    r = run(proj, 'prepare.py', f'--input={tmp_path / "p.jsonl"}', '--format=pairs', '--dataset=sft',
            '--tokenizer_from=shakespeare_char')
    assert r.returncode == 0, r.stderr
    folder = proj / 'data' / 'sft'
    ids, mask = np.fromfile(folder / 'train.bin', np.uint16), np.fromfile(folder / 'train_mask.bin', np.uint8)
    meta = json.loads((folder / 'meta.json').read_text())
    chars = meta['tokenizer']['chars']
    text = ''.join(chars[i] for i in ids)
    assert text.startswith('last: speak proceed\nproceed\n\nlast: famish further\nfurther\n\n')
    assert ''.join(chars[i] for i, m in zip(ids, mask) if m).startswith('proceed\n\nfurther\n\n')
    assert len(np.fromfile(folder / 'val_mask.bin', np.uint8)) == len(np.fromfile(folder / 'val.bin', np.uint16))
    assert meta['format'] == 'pairs' and meta['end'] == '\n\n'
    bad = [('{"prompt": "a", "response": "b"}\nnot json', 'line 2: not valid JSON'),
           ('{"prompt": "a"}', 'line 1: needs string values'),
           ('{"prompt": "a", "response": 3}', 'line 1: needs string values'),
           ('[1, 2]', 'line 1: needs string values'),
           ('{"prompt": "a", "response": "x\\n\\ny"}', 'line 1: a pair must not hold a blank line'),
           ('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "b\\n"}', 'line 2: a response must not end '
                                                                                'with a newline')]
    for i, (content, message) in enumerate(bad):
        (tmp_path / 'bad.jsonl').write_text(content)
        msg = one_line_error(run(proj, 'prepare.py', f'--input={tmp_path / "bad.jsonl"}', '--format=pairs',
                                 f'--dataset=bad{i}', '--tokenizer_from=shakespeare_char'))
        assert message in msg
        assert not (proj / 'data' / f'bad{i}').exists()  # nothing written


def test_tiny_run_on_pairs_trains_and_reports_exact_match(proj, tmp_path):
    write_jsonl(tmp_path / 'p.jsonl', PAIRS)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "p.jsonl"}', '--format=pairs', '--dataset=sft',
               '--tokenizer_from=shakespeare_char').returncode == 0
    r = run(proj, 'gpt.py', *TINY, '--dataset=sft', '--max_iters=30', '--prompt=last: hear all', '--temperature=0')
    assert r.returncode == 0, r.stderr
    assert len(val_lines(r.stdout)) == 4
    assert re.search(r'^whole-split val loss [\d.]+ \([\d,]+ response tokens\), val bpb [\d.]+$', r.stdout, re.M)
    assert re.search(r'^exact match: all \d+\.\d%$', r.stdout, re.M)
    sample = r.stdout.split('exact match')[1].split('\n', 1)[1]
    assert sample.startswith('last: hear all\n')
    assert sample.split('---------------')[0].count('\n') == 2  # the prompt's line, the answer's: it stopped at the end marker
    # sampling again, the default stop comes from the checkpoint, whatever --dataset says
    sample_only = ['--init_from=resume', '--max_iters=0', '--prompt=last: hear all', '--temperature=0', '--max_new_tokens=30']
    body = lambda r: r.stdout.split('last: hear all\n', 1)[1].split('---------------')[0]
    for cache in ('true', 'false'):
        again = run(proj, 'gpt.py', *sample_only, '--dataset=shakespeare_char', f'--kv_cache={cache}')
        assert again.returncode == 0, again.stderr
        assert '\n\n' not in body(again)[:-1]  # ended at the pairs' end marker
        free = body(run(proj, 'gpt.py', *sample_only, '--stop=zzzzz', f'--kv_cache={cache}'))  # never comes
        stop = free[5:7]
        cut = run(proj, 'gpt.py', *sample_only, f'--stop={stop}', f'--kv_cache={cache}')
        assert body(cut) == free[:free.index(stop)] + '\n'  # cut at the first occurrence, after the prompt


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
def test_tasks_demo_data(proj):
    assert run(proj, 'prepare.py', f'--input={SHAKESPEARE}').returncode == 0
    r = run(proj, 'prepare.py', f'--input={SHAKESPEARE}', '--format=tasks', '--tokenizer_from=shakespeare_char')
    assert r.returncode == 0, r.stderr
    folder = proj / 'data' / 'shakespeare_tasks'
    rows = [json.loads(l) for l in (folder / 'pairs.jsonl').read_text().splitlines()]
    meta = json.loads((folder / 'meta.json').read_text())
    n_val = len(meta['val_tasks'])
    line = lambda p: p.split(': ', 1)[1]
    train_lines, val_lines_ = ({line(r['prompt']) for r in rows[:-n_val]}, {line(r['prompt']) for r in rows[-n_val:]})
    assert not train_lines & val_lines_  # held-out pairs ask about lines training never saw
    assert set(meta['val_tasks']) == {'upper', 'first', 'last', 'reverse'}
    assert all(len(r['prompt']) + len(r['response']) + 3 <= 64 for r in rows)  # a pair fits the default context
    up = next(r for r in rows if r['prompt'].startswith('upper: '))
    assert up['response'] == line(up['prompt']).upper()


def test_jsonl_lines_end_at_newline_only(proj, tmp_path):
    # U+2028, U+2029 and U+0085 are line breaks to str.splitlines(), but JSON strings may hold them
    odd = [{'prompt': f'say {w}\u2028', 'response': f'{w}\u2029\x85'} for w in WORDS] * 2
    (tmp_path / 'p.jsonl').write_text(''.join(json.dumps(r, ensure_ascii=False) + '\r\n' for r in odd), encoding='utf-8')
    r = run(proj, 'prepare.py', f'--input={tmp_path / "p.jsonl"}', '--format=pairs', '--dataset=odd')
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (proj / 'data' / 'odd' / 'pairs.jsonl').read_text(encoding='utf-8').split('\n') if l]
    assert rows == odd


def test_eval_rows_convert_the_response_tokens_to_bits_per_byte(proj, tmp_path):
    # responses of 2-byte characters after ASCII prompts: the eval rows' bpb must use the bytes of the
    # scored (response) tokens, as the final whole-split row does, not the mean of every val token
    pairs = [{'prompt': f'accent {w}', 'response': w.replace('e', 'é').replace('a', 'à')} for w in WORDS] * 6
    write_jsonl(tmp_path / 'p.jsonl', pairs)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "p.jsonl"}', '--format=pairs', '--dataset=acc').returncode == 0
    r = run(proj, 'gpt.py', *TINY, '--dataset=acc', '--max_iters=10', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    rows = csv.DictReader((proj / 'out' / 'log.csv').read_text().splitlines())
    ratio = {row['kind']: float(row['val_bpb']) / float(row['val_loss']) for row in rows if row['kind'] in ('eval', 'final')}
    assert ratio['eval'] == pytest.approx(ratio['final'], rel=1e-4)


def test_whole_split_scores_every_response_token_at_any_block_size():
    ids = np.random.default_rng(0).integers(0, 11, size=60).astype(np.uint16)
    mask = np.tile(np.array([0] * 4 + [1] * 6, dtype=np.uint8), 6)  # pairs: 4 prompt tokens, 6 response tokens
    split = instruct.PairSplit(ids, mask)
    for block_size in (2, 3, 5, 9, 16):
        model = gpt.GPT(gpt.GPTConfig(11, block_size, 1, 1, 16))
        assert gpt.full_val_loss(model, split, block_size, 'cpu')[2] == 36


def test_exact_match_follows_kv_cache():
    ids = np.array([1, 2, 3, 4, 5, 6] * 4, dtype=np.uint16)
    mask = np.array([0, 0, 0, 1, 1, 1] * 4, dtype=np.uint8)
    model, seen = gpt.GPT(gpt.GPTConfig(11, 16, 1, 1, 16)).eval(), []
    watched = lambda *a, **k: seen.append(k['kv_cache']) or gpt.generate(*a, **k)  # exact_match's generate

    class Tok:
        decode = staticmethod(lambda ids: ''.join(chr(97 + i) for i in ids))
    for cache in (True, False):
        split = instruct.PairSplit(ids, mask)
        instruct.exact_match(watched, model, split, Tok, 'g', None, 'cpu', contextlib.nullcontext(), cache)
        assert seen and set(seen) == {cache}
        seen.clear()
