"""GPT-2 (gpt2.py): a small random GPT-2 made by transformers and a small BPE made by tokenizers, both saved
as save_pretrained saves them, are the reference. No network: the hub name is tested on a cache laid out as
huggingface_hub lays it, in offline mode."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import gpt
from conftest import CORPUS, REPO, SHAKESPEARE, TINY, one_line_error, run, val_lines
from gpt2_folder import make
from gpt2 import load_gpt2
from tokenizer import BPETokenizer

transformers = pytest.importorskip('transformers')  # test-only references, in requirements.txt
tokenizers = pytest.importorskip('tokenizers')

# what GPT-2's pattern splits unlike Python's \w, \d and \s: numbers that are not digits, _, \x1c, odd spaces
ODD = ("Hello  world's 123 12345 ½² Ⅻ ٣٤ a_b \x1c\tok\n\n x<|endoftext|>Ça va? 😀 déjà  \u2028 \u3000x 'S 've "
       "don't\r\n  \t end<|endoftext|>")


def text():
    return open(SHAKESPEARE, encoding='utf-8').read() if os.path.exists(SHAKESPEARE) else CORPUS


@pytest.fixture(scope='session')
def reference(tmp_path_factory):
    """A folder as save_pretrained writes it: a 2-block GPT-2, 32 wide, and a 512-token byte-level BPE."""
    folder = tmp_path_factory.mktemp('gpt2') / 'tiny-gpt2'
    tk = make(folder, text(), vocab_size=512, n_layer=2, n_head=2, n_embd=32, n_positions=64)
    return folder, tk


def ours(folder, **kw):
    ckpt, _ = load_gpt2(str(folder), None, None, **kw)
    model = gpt.GPT(gpt.GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    return model.eval()


def test_logits_and_greedy_text_equal_transformers(reference):
    folder, _ = reference
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    model = ours(folder)
    idx = torch.randint(512, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(idx, idx)[0] - theirs(idx).logits).abs().max() < 1e-4
        greedy = theirs.generate(idx[:, :8], max_new_tokens=40, do_sample=False, attention_mask=torch.ones(3, 8))
    for kv_cache in (True, False):
        assert torch.equal(gpt.generate(model, idx[:, :8], 40, temperature=0, kv_cache=kv_cache), greedy)


def test_each_difference_from_our_defaults_matters(reference):
    folder, _ = reference
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    model = ours(folder)
    x = torch.linspace(-6, 6, 1001)
    their_act = theirs.transformer.h[0].mlp.act
    assert (model.blocks[0].mlp.act(x) - their_act(x)).abs().max() < 1e-6  # GPT-2's GELU is tanh's
    assert (torch.nn.functional.gelu(x) - their_act(x)).abs().max() > 1e-4  # not the exact one
    cropped = ours(folder, block_size=16)  # fewer positions: the table is cut, the first 16 are the same
    assert cropped.wpe.weight.shape[0] == 16 and cropped.lm_head.bias is None  # and a tied head has no bias
    idx = torch.randint(512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (cropped(idx, idx)[0] - theirs(idx).logits).abs().max() < 1e-4


def test_token_ids_equal_tokenizers_on_the_whole_corpus(reference):
    folder, tk = reference
    tok = BPETokenizer.from_files(folder / 'vocab.json', folder / 'merges.txt')
    corpus = text()
    assert tok.encode(corpus) == tk.encode(corpus).ids
    assert tok.encode(ODD) == tk.encode(ODD).ids and tok.decode(tok.encode(ODD)) == ODD
    assert tok.vocab_size == 512 and tok.encode('<|endoftext|>') == [tk.token_to_id('<|endoftext|>')]


def prepared(proj, folder, name='mine'):
    r = run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', f'--dataset={name}', f'--tokenizer_from={folder}')
    assert r.returncode == 0, r.stderr
    return name


@pytest.mark.parametrize('knobs', [[], ['--lora_rank=4'], ['--lora_rank=4', '--quantize=nf4']])
def test_fine_tune_from_a_folder(proj, reference, knobs):
    folder, _ = reference
    data = prepared(proj, folder)
    args = [*TINY[:1], f'--dataset={data}', f'--init_from={folder}', '--block_size=32', '--max_iters=30',
            '--eval_interval=15', '--warmup_iters=0', '--learning_rate=3e-3', '--dtype=float32', '--compile=false',
            '--max_new_tokens=10', '--prompt=ROMEO:', *knobs]
    r = run(proj, 'gpt.py', *args)
    assert r.returncode == 0, r.stderr
    losses = [float(line.rsplit(' ', 1)[1]) for line in val_lines(r.stdout)]
    assert losses[-1] < losses[0] - 0.1  # the val loss falls
    ckpt = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)
    if knobs:  # LoRA pins its base: GPT-2's model.safetensors, by sha256
        assert ckpt['base']['path'].endswith('model.safetensors') and len(ckpt['base']['sha256']) == 64
    again = run(proj, 'gpt.py', f'--dataset={data}', '--init_from=resume', '--max_iters=0', '--max_new_tokens=5',
                '--prompt=ROMEO:')
    assert again.returncode == 0 and '\nROMEO:' in again.stdout, again.stderr


def test_int8_eval_of_gpt2_is_close_to_float(proj, reference):
    folder, _ = reference
    data = prepared(proj, folder)
    loss = {}
    for q in ('', 'int8'):
        r = run(proj, 'gpt.py', f'--dataset={data}', f'--init_from={folder}', '--eval_only=true', f'--quantize={q}',
                '--dtype=float32')
        assert r.returncode == 0, r.stderr
        loss[q] = float(re.search(r'whole-split val loss ([\d.]+)', r.stdout).group(1))
    assert abs(loss['int8'] - loss['']) < 0.01


def hub_cache(tmp_path, folder):
    """GPT-2's files where huggingface_hub keeps openai-community/gpt2: a snapshot named by its commit."""
    commit = 'a' * 40
    repo = tmp_path / 'hub' / 'models--openai-community--gpt2'
    shutil.copytree(folder, repo / 'snapshots' / commit)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    return {'HF_HUB_CACHE': str(tmp_path / 'hub'), 'HF_HUB_OFFLINE': '1'}


def test_the_hub_name_reads_the_cache_offline(proj, reference, tmp_path):
    folder, _ = reference
    env = hub_cache(tmp_path, folder)
    r = run(proj, 'prepare.py', f'--input={tmp_path / "corpus.txt"}', '--dataset=mine', '--tokenizer_from=gpt2', env=env)
    assert r.returncode == 0, r.stderr
    r = run(proj, 'gpt.py', '--dataset=mine', '--init_from=gpt2', '--eval_only=true', env=env)
    assert r.returncode == 0 and 'whole-split val loss' in r.stdout, r.stderr


def test_bad_gpt2_input_is_refused_in_one_line_with_nothing_written(proj, reference, tmp_path):
    folder, _ = reference
    data = prepared(proj, folder)
    empty = {'HF_HUB_CACHE': str(tmp_path / 'empty'), 'HF_HUB_OFFLINE': '1'}
    assert '--init_from=FOLDER' in one_line_error(run(proj, 'gpt.py', f'--dataset={data}', '--init_from=gpt2', env=empty))
    lacking = tmp_path / 'lacking'
    shutil.copytree(folder, lacking)
    (lacking / 'merges.txt').unlink()
    assert 'lacks merges.txt' in one_line_error(run(proj, 'gpt.py', f'--dataset={data}', f'--init_from={lacking}'))
    other = tmp_path / 'other'
    shutil.copytree(folder, other)
    cfg = json.loads((other / 'config.json').read_text())
    (other / 'config.json').write_text(json.dumps({**cfg, 'model_type': 'llama'}))
    assert 'another architecture' in one_line_error(run(proj, 'gpt.py', f'--dataset={data}', f'--init_from={other}'))
    assert 'another tokenizer' in one_line_error(run(proj, 'gpt.py', f'--init_from={folder}', '--max_iters=0'))
    for name, change, message in (  # a damaged file, another size, a config that is no object: one line each
            ('truncated', lambda f: f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2]), 'no readable GPT-2'),
            ('empty', lambda f: f.write_bytes(b''), 'no readable GPT-2'),
            ('wider', lambda f: f.parent.joinpath('config.json').write_text(json.dumps({**cfg, 'n_embd': 64})),
             'does not hold the GPT-2 of its config.json'),
            ('list', lambda f: f.parent.joinpath('config.json').write_text('[]'), 'holds a list')):
        damaged = tmp_path / name
        shutil.copytree(folder, damaged)
        change(damaged / 'model.safetensors')
        r = run(proj, 'gpt.py', f'--dataset={data}', f'--init_from={damaged}', '--max_iters=0', env={})
        assert message in one_line_error(r), name
    long = 'ROMEO: ' * 100
    assert 'longer than' in one_line_error(run(proj, 'gpt.py', f'--dataset={data}', f'--init_from={folder}',
                                               '--max_iters=0', f'--prompt={long}'))
    assert not (proj / 'out').exists() or os.listdir(proj / 'out') == ['run.lock']  # claimed first, nothing written


def test_import_gpt_loads_no_next_step_module():
    code = ("import sys, gpt; print(sorted(m for m in ('lora', 'quant', 'muon', 'instruct', 'gpt2', 'export', 'gguf', "
            "'huggingface_hub', 'safetensors', 'transformers', 'tokenizers') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr


def test_instruction_pairs_with_gradient_checkpointing_from_a_folder(proj, reference, tmp_path):
    folder, _ = reference
    pairs = [{'prompt': f'upper: {w}', 'response': w.upper()} for w in ('to be', 'or not', 'ay me', 'good night')] * 30
    (tmp_path / 'p.jsonl').write_text(''.join(json.dumps(p) + '\n' for p in pairs))
    r = run(proj, 'prepare.py', f'--input={tmp_path / "p.jsonl"}', '--format=pairs', '--dataset=sft',
            f'--tokenizer_from={folder}')
    assert r.returncode == 0, r.stderr
    r = run(proj, 'gpt.py', '--dataset=sft', f'--init_from={folder}', '--block_size=32', '--lora_rank=4',
            '--gradient_checkpointing=true', '--max_iters=10', '--eval_interval=5', '--eval_iters=2', '--batch_size=4',
            '--gradient_accumulation_steps=1', '--compile=false', '--prompt=upper: to be', '--max_new_tokens=8')
    assert r.returncode == 0, r.stderr
    assert re.search(r'^exact match: all \d+\.\d%$', r.stdout, re.M) and '\nupper: to be\n' in r.stdout


@pytest.mark.slow
def test_gpt2_under_torchrun(proj, reference):
    folder, _ = reference
    data = prepared(proj, folder)
    r = run(proj, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'gpt.py', f'--dataset={data}',
            f'--init_from={folder}', '--device=cpu', '--block_size=32', '--max_iters=4', '--eval_interval=2',
            '--eval_iters=2', '--batch_size=4', '--gradient_accumulation_steps=1', '--max_new_tokens=5',
            env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'x processes 2' in r.stdout and r.stdout.count('whole-split val loss') == 1
