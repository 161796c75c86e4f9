"""tokenizer.py and the BPE path end to end: round trips, determinism, saved merges, refusals, bits per byte."""
import json
import math
import os
import random
import re
import shutil

import numpy as np
import pytest

from conftest import CORPUS, SHAKESPEARE, TINY, final, one_line_error, run, val_lines
from tokenizer import SPLIT, BPETokenizer, CharTokenizer, from_description

TEXT = CORPUS + "def f(x_1, y2):\n    return x_1 ** 2 + 1234567  # snake_case\r\n\t\tend\n"


def random_unicode(rng, n):
    pools = ['abc XYZ', '  \t\n\r\n', '日本語の文章', '😀🎉👍🏽', 'e\u0301a\u0308', '0123456789', '!?.,;:_-()', 'ÇàéîõüßØ']
    return ''.join(rng.choice(rng.choice(pools)) for _ in range(n))


def test_bpe_round_trips_any_text():
    tok = BPETokenizer.train(TEXT, 400)
    rng = random.Random(0)
    samples = ['', ' ', '\r\n', '    ', 'a  b   c', TEXT] + [random_unicode(rng, rng.randint(1, 80)) for _ in range(200)]
    for s in samples:
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(TEXT)) < len(TEXT.encode('utf-8')) / 2  # the merges compress
    assert ''.join(re.findall(SPLIT, TEXT)) == TEXT  # the pre-split loses nothing


def test_bpe_decodes_any_ids_without_error():
    tok = BPETokenizer.train(TEXT, 300)
    assert tok.decode([0xE6, 0x97]) == '\ufffd'  # a character cut in half is U+FFFD, not an exception
    rng = random.Random(1)
    for _ in range(50):
        tok.decode([rng.randrange(tok.vocab_size) for _ in range(20)])


def test_bpe_is_deterministic_and_learns_frequent_pairs_first():
    a, b = BPETokenizer.train(TEXT, 350), BPETokenizer.train(TEXT, 350)
    assert a.merges == b.merges and len(a.merges) == 94
    assert a.vocab[256] in (b' s', b'e ', b'ea', b' a', b'sp')  # some frequent pair of the text
    chunks = re.findall(SPLIT, TEXT)
    assert all(len(a.encode(c)) >= 1 for c in chunks)
    # encoding with the saved merges reproduces what training's merges do to the text
    again = from_description(json.loads(json.dumps(a.describe())))
    assert again.encode(TEXT) == a.encode(TEXT)


def test_bpe_merges_stay_inside_chunks():
    tok = BPETokenizer.train('hello world ' * 50, 300)
    for token in tok.vocab[256:]:
        assert len(re.findall(SPLIT, token.decode('utf-8', errors='ignore') or 'x')) <= 1


def test_small_text_stops_early_and_says_so(capsys):
    tok = BPETokenizer.train('abab', 1000)
    assert tok.vocab_size < 1000 and 'stopped early' in capsys.readouterr().out
    assert BPETokenizer.train('abc', 256).merges == []  # 256: bytes only


def test_char_tokenizer_names_unknown_characters():
    tok = CharTokenizer.train('hello')
    assert tok.decode(tok.encode('hole')) == 'hole'
    with pytest.raises(ValueError, match=r"\['!', 'z'\]"):
        tok.encode('hez!')


@pytest.mark.parametrize('desc', [None, {}, {'type': 'wordpiece'}, {'type': 'char', 'chars': ['b', 'a']},
                                  {'type': 'char', 'chars': ['ab']}, {'type': 'bpe', 'merges': [[1, 256]]},
                                  {'type': 'bpe', 'merges': 'x'}, {'type': 'bpe', 'merges': [[1, 2, 3]]}])
def test_malformed_descriptions_are_refused(desc):
    with pytest.raises(ValueError):
        from_description(desc)


def test_prepare_bpe_dataset(proj):
    r = run(proj, 'prepare.py', '--input=corpus.txt' if (proj / 'corpus.txt').exists() else f'--input={proj.parent / "corpus.txt"}',
            '--tokenizer=bpe', '--vocab_size=300')
    assert r.returncode == 0, r.stderr
    folder = proj / 'data' / 'shakespeare_bpe'  # its own folder: the char dataset stays
    meta = json.loads((folder / 'meta.json').read_text())
    assert meta['tokenizer']['type'] == 'bpe' and meta['vocab_size'] == 300 == len(meta['tokenizer']['merges']) + 256
    tok = from_description(meta['tokenizer'])
    train = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    val = np.fromfile(folder / 'val.bin', dtype=np.uint16)
    n = int(0.9 * len(CORPUS))  # the text is cut before tokenizing
    assert train.tolist() == tok.encode(CORPUS[:n])  # the saved merges give exactly the ids written
    assert tok.decode(val.tolist()) == CORPUS[n:] and meta['val_bytes'] == len(CORPUS[n:].encode('utf-8'))
    assert (proj / 'data' / 'shakespeare_char' / 'meta.json').exists()


def test_prepare_refusals(proj, tmp_path):
    corpus = tmp_path / 'corpus.txt'
    for args, message in ((['--tokenizer=wordpiece'], "'char' or 'bpe'"),
                          (['--tokenizer=bpe', '--vocab_size=255'], 'vocab_size must be in [256, 65536]'),
                          (['--tokenizer=bpe', '--vocab_size=70000'], 'vocab_size must be in [256, 65536]'),
                          (['--tokenizer=bpe', '--dataset=shakespeare_char'], 'holds a char text dataset')):
        assert message in one_line_error(run(proj, 'prepare.py', f'--input={corpus}', *args))
    shutil.copytree(proj / 'data' / 'shakespeare_char', proj / 'data' / 'broken')
    (proj / 'data' / 'broken' / 'meta.json').write_text('{"tokenizer": {"type": "bpe", "merges": [[0, 999]]}}')
    for script in ('gpt.py', 'bigram.py'):
        assert 'malformed tokenizer' in one_line_error(run(proj, script, '--dataset=broken'))


def test_old_meta_json_still_loads(proj):
    meta = proj / 'data' / 'shakespeare_char' / 'meta.json'
    chars = json.loads(meta.read_text())['tokenizer']['chars']
    meta.write_text(json.dumps({'vocab_size': len(chars), 'chars': chars}))  # before tokenizer.py
    r = run(proj, 'bigram.py', '--max_iters=5', '--eval_iters=2', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr


def test_bpe_end_to_end_train_resume_sample(proj):
    assert run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', '--tokenizer=bpe', '--vocab_size=300').returncode == 0
    args = [*TINY, '--dataset=shakespeare_bpe', '--lr_decay_iters=20', '--dropout=0.1', '--prompt=Naïve 😀 ~zq']
    first = run(proj, 'gpt.py', *args, '--max_iters=10')
    resumed = run(proj, 'gpt.py', *args, '--max_iters=20', '--init_from=resume')
    straight = run(proj, 'gpt.py', *args, '--max_iters=20', '--out_dir=straight')
    assert all(r.returncode == 0 for r in (first, resumed, straight)), first.stderr + resumed.stderr
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]
    assert 'Naïve 😀 ~zq' in first.stdout  # any prompt encodes with bytes, and decodes back
    bpb = final(proj / 'out')['val_bpb']
    assert 0 < bpb < 8 * 1.1
    # a char checkpoint against the BPE dataset is refused, and says how to fix it
    assert run(proj, 'gpt.py', *TINY, '--max_iters=5', '--out_dir=char').returncode == 0
    msg = one_line_error(run(proj, 'gpt.py', '--init_from=resume', '--out_dir=char', '--dataset=shakespeare_bpe'))
    assert 'another vocabulary' in msg and '--tokenizer_from=shakespeare_char' in msg
    assert '--dataset=shakespeare_char' in msg  # most often the fix: the checkpoint's own dataset
    # bytes that were not UTF-8 (Python's \udcXX) have no byte-level encoding either: refused before training
    for script in ('gpt.py', 'bigram.py'):
        r = run(proj, script, *TINY * (script == 'gpt.py'), '--dataset=shakespeare_bpe', '--max_iters=10',
                '--prompt=caf\udce9', '--out_dir=utf8')
        assert "['\\udce9']" in one_line_error(r) and not (proj / 'utf8').exists()
    r = run(proj, 'bigram.py', '--dataset=shakespeare_bpe', '--max_iters=20', '--eval_iters=2', '--max_new_tokens=20')
    assert r.returncode == 0 and 'val bpb' in r.stdout, r.stderr


def test_bpb_of_char_data_is_loss_over_ln2(proj):
    ascii_text = ''.join(c for c in CORPUS if ord(c) < 128)
    (proj / 'ascii.txt').write_text(ascii_text)
    assert run(proj, 'prepare.py', '--input=ascii.txt', '--dataset=ascii').returncode == 0
    r = run(proj, 'gpt.py', *TINY, '--dataset=ascii', '--max_iters=5')
    assert r.returncode == 0, r.stderr
    loss, bpb = final(proj / 'out')['val_loss'], final(proj / 'out')['val_bpb']
    assert bpb == pytest.approx(loss / math.log(2), rel=2e-3)  # every char is one byte (up to rounding)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
def test_bpe_on_tiny_shakespeare_compresses_like_a_standard_trainer():
    with open(SHAKESPEARE, encoding='utf-8') as f:
        text = f.read()
    n = int(0.9 * len(text))
    tok = BPETokenizer.train(text[:n], 1024)
    ratio = len(text[n:].encode('utf-8')) / len(tok.encode(text[n:]))
    assert ratio >= 2.26 * 0.97  # a widely used byte-level BPE gets about 2.26 bytes per token at 1024
