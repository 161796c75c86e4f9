"""bigram.py: the model, its whole-split evaluation, and the real script end to end."""
import math
import os
import re

import numpy as np
import torch
import torch.nn.functional as F
import pytest

import bigram
from conftest import SHAKESPEARE, one_line_error, run

TINY = ['--batch_size=8', '--block_size=8', '--eval_iters=5', '--eval_interval=10', '--max_new_tokens=40']


def val_lines(out):
    return re.findall(r'^step \d+: train loss [\d.]+, val loss [\d.]+$', out, flags=re.M)


def test_loss_goes_down():
    torch.manual_seed(0)
    data = bigram.Split(np.tile(np.arange(10, dtype=np.uint16), 100))  # 0 1 2 ... 9 0 1 ...: perfectly predictable
    model = bigram.BigramLanguageModel(10)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    ix = torch.randint(len(data.ids) - 8, (16,))
    first = model(*bigram.get_batch(data, ix, 8, 'cpu'))[1].item()
    for _ in range(100):
        loss = model(*bigram.get_batch(data, ix, 8, 'cpu'))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05


def test_full_val_loss_predicts_every_token_once():
    torch.manual_seed(0)
    model = bigram.BigramLanguageModel(7)
    data = np.random.default_rng(0).integers(0, 7, size=1001).astype(np.uint16)
    table = model.token_embedding_table.weight
    exact = F.cross_entropy(table[torch.from_numpy(data[:-1].astype(np.int64))],
                            torch.from_numpy(data[1:].astype(np.int64))).item()
    for block_size in (8, 10, 1000):  # windows that do and don't divide the split evenly
        loss, _, count = bigram.full_val_loss(model, bigram.Split(data), block_size, 'cpu', batch_size=3)
        assert count == len(data) - 1 and loss == pytest.approx(exact, rel=1e-5)


def test_train_resume_and_sample(proj):
    r = run(proj, 'bigram.py', *TINY, '--max_iters=20', '--prompt=First')
    assert r.returncode == 0, r.stderr
    assert len(val_lines(r.stdout)) == 3  # steps 0, 10, 20
    assert re.search(r'^whole-split val loss \d\.\d{4}', r.stdout, flags=re.M)
    assert '\nFirst' in r.stdout  # the sample starts with the prompt
    assert (proj / 'out-bigram' / 'ckpt.pt').exists()

    # 20 steps, then a resume to 40, print the same step 40 line as 40 steps straight
    resumed = run(proj, 'bigram.py', *TINY, '--max_iters=40', '--init_from=resume')
    straight = run(proj, 'bigram.py', *TINY, '--max_iters=40', '--out_dir=straight')
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]
    assert val_lines(resumed.stdout)[-1].startswith('step 40:')

    # sample only: no training, no evaluation, the checkpoint untouched
    before = (proj / 'out-bigram' / 'ckpt.pt').read_bytes()
    r = run(proj, 'bigram.py', '--init_from=resume', '--max_iters=0', '--prompt=All', '--num_samples=2')
    assert r.returncode == 0, r.stderr
    assert not val_lines(r.stdout) and r.stdout.count('\nAll') == 2
    assert (proj / 'out-bigram' / 'ckpt.pt').read_bytes() == before


def test_refusals(proj):
    assert 'no checkpoint' in one_line_error(run(proj, 'bigram.py', '--init_from=resume'))
    assert 'init_from' in one_line_error(run(proj, 'bigram.py', '--init_from=gpt2'))
    assert 'not in the vocabulary' in one_line_error(run(proj, 'bigram.py', '--prompt=Zebra!'))
    assert 'run: python prepare.py' in one_line_error(run(proj, 'bigram.py', '--dataset=nothing'))
    os.makedirs(proj / 'out-bigram')
    (proj / 'out-bigram' / 'ckpt.pt').write_bytes(os.urandom(1000))
    assert 'not a loadable checkpoint' in one_line_error(run(proj, 'bigram.py', '--init_from=resume'))
    torch.save({'model_type': 'something else'}, proj / 'out-bigram' / 'ckpt.pt')
    assert 'not a bigram checkpoint' in one_line_error(run(proj, 'bigram.py', '--init_from=resume'))
    # instruction pairs: a bigram has no prompt to follow
    pairs = ''.join('{"prompt": "say %s", "response": "%s"}\n' % (w, w) for w in 'abcdefghij' * 3)
    (proj / 'p.jsonl').write_text(pairs)
    assert run(proj, 'prepare.py', '--input=p.jsonl', '--format=pairs', '--dataset=sft').returncode == 0
    assert 'holds instruction pairs' in one_line_error(run(proj, 'bigram.py', '--dataset=sft'))


def test_vocabulary_mismatch_is_refused(proj, tmp_path):
    assert run(proj, 'bigram.py', *TINY, '--max_iters=10').returncode == 0
    (tmp_path / 'other.txt').write_text('abcdefghij\n' * 100)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "other.txt"}').returncode == 0
    before = (proj / 'out-bigram' / 'ckpt.pt').read_bytes()
    assert 'another vocabulary' in one_line_error(run(proj, 'bigram.py', '--init_from=resume', '--max_iters=20'))
    assert (proj / 'out-bigram' / 'ckpt.pt').read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
def test_default_run_reaches_bigram_target(proj):
    # the example is its own test: the default settings reach the target on the real data
    assert run(proj, 'prepare.py', f'--input={SHAKESPEARE}').returncode == 0
    r = run(proj, 'bigram.py', '--max_new_tokens=10')
    assert r.returncode == 0, r.stderr
    loss = float(re.search(r'whole-split val loss ([\d.]+)', r.stdout).group(1))
    assert 2.45 < loss <= 2.50
    assert math.log(65) > 2.50
