"""export.py: --export=hf against transformers (logits, greedy text, the tokenizer's ids), --export=gguf
read back with gguf's own reader (and run by llama.cpp where llama-cpp-python is installed), and the
models and folders that can't export, refused in one line with nothing written."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import torch

import export
import gpt
from conftest import CORPUS, TINY, one_line_error, run
from gpt2_folder import make
from tokenizer import CharTokenizer, from_description, gpt2_bytes

transformers = pytest.importorskip('transformers')  # test-only references, in requirements.txt

NO_LLAMA = ('llama-cpp-python is not installed: pip install llama-cpp-python compiles llama.cpp from its '
            'source (13 minutes on 2 cores, one job at a time; docs/results.md)')
ASCII = CORPUS.replace('Ça va? Naïve café, déjà vu — Ångström. 😀', 'So be it; a naive cafe, and a sun.')
# nanoGPT's GPT-2 parts at a size whose positions hold a prompt and 100 tokens
CLASSIC = ['--rope=false', '--rmsnorm=false', '--qk_norm=false', '--optimizer=adamw', '--block_size=128',
           '--learning_rate=3e-3']
# GPTConfig switches that GPT-2 can express, each alone, and the lecture's parts together
EXPRESSIBLE = [dict(), dict(gelu_tanh=True), dict(relu=True), dict(bias=True), dict(tie_weights=False),
               dict(pos=False), dict(attention=False), dict(ffn=False),
               dict(relu=True, bias=True, tie_weights=False, weight_init='pytorch')]


def random_model(vocab_size=60, n_embd=64, **parts):
    """A GPT of these parts with random weights, large enough that GELU's two forms differ."""
    torch.manual_seed(0)
    config = gpt.GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=2, n_head=4, n_embd=n_embd,
                           **parts)
    model = gpt.GPT(config)
    for name, p in model.named_parameters():
        p.data = torch.randn_like(p) * 0.25
        if 'ln' in name and name.endswith('weight'):
            p.data += 1.0
    return model.eval(), config


def write_hf(model, config, tok, folder):
    files = export.hf_files(model, vars(config), tok.describe())
    os.makedirs(folder)
    for name, content in files.items():
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(content)
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def greedy(model, idx, n):
    return gpt.generate(model, idx, n, temperature=0)


@pytest.mark.parametrize('parts', EXPRESSIBLE, ids=lambda p: ','.join(p) or 'gpt2')
def test_transformers_computes_what_we_compute(parts, tmp_path):
    """Each part GPT-2 can express: logits within 1e-4 on three prompts, the same 100 greedy tokens."""
    tok = CharTokenizer(sorted(set(ASCII))[:60])
    model, config = random_model(**parts)
    theirs = write_hf(model, config, tok, tmp_path / 'hf')
    prompts = torch.randint(60, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(prompts, prompts)[0] - theirs(prompts).logits).abs().max() < 1e-4
        ours = greedy(model, prompts[:1], 100)
        assert torch.equal(theirs.generate(prompts[:1], max_new_tokens=100, do_sample=False), ours)


def test_a_head_bias_moves_into_the_final_norm_and_only_where_it_can(tmp_path):
    """logits = W (g n + beta) + b: beta' = beta + delta with W delta = b. With n_embd < vocab_size no
    delta exists: refused, saying why."""
    model, config = random_model(bias=True, tie_weights=False)
    assert model.lm_head.bias is not None and model.lm_head.bias.abs().max() > 0.1
    state = export.gpt2_state(model, vars(config))
    assert not torch.equal(state['ln_f.bias'], model.ln_f.bias.detach())
    narrow = vars(random_model(n_embd=32, vocab_size=60, bias=True, tie_weights=False)[1])
    assert 'only when n_embd >= vocab_size (here 32 < 60)' in export.problem(narrow, {'type': 'char'}, 'hf')


def train(proj, *args):
    r = run(proj, 'gpt.py', *TINY, *CLASSIC, '--max_iters=30', '--max_new_tokens=0', *args)
    assert r.returncode == 0, r.stderr


def exported(proj, source, fmt, out, *args):
    r = run(proj, 'gpt.py', f'--init_from={source}', '--max_iters=0', f'--export={fmt}', f'--out_dir={out}',
            '--prompt=All: Speak', '--temperature=0', '--max_new_tokens=100', *args)
    assert r.returncode == 0, r.stderr
    return r


def test_a_char_run_and_a_bpe_run_export_to_transformers(proj):
    """End to end: gpt.py's greedy sample after the export is pipeline('text-generation')'s; the
    tokenizer gives our ids on the whole val split; the model card gives the whole-split figures."""
    assert run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', '--tokenizer=bpe', '--vocab_size=300',
               '--dataset=bpe').returncode == 0
    for dataset in ('shakespeare_char', 'bpe'):
        train(proj, f'--dataset={dataset}', f'--out_dir=run-{dataset}')
        r = exported(proj, f'run-{dataset}/ckpt.pt', 'hf', f'hf-{dataset}', f'--dataset={dataset}')
        sample = r.stdout.split('\n---------------')[0].rsplit('All: Speak', 1)[1]
        folder = str(proj / f'hf-{dataset}')
        pipe = transformers.pipeline('text-generation', model=folder, device='cpu')
        text = pipe('All: Speak', max_new_tokens=100, do_sample=False)[0]['generated_text']
        assert text == 'All: Speak' + sample
        meta = json.loads((proj / 'data' / dataset / 'meta.json').read_text())
        tok = from_description(meta['tokenizer'])
        val = np.fromfile(proj / 'data' / dataset / 'val.bin', dtype=np.uint16).tolist()
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
        assert theirs(tok.decode(val))['input_ids'] == val
        card = (proj / f'hf-{dataset}' / 'README.md').read_text()
        whole = [line for line in r.stdout.splitlines() if line.startswith('whole-split')][0]
        loss = whole.split('val loss ')[1].split()[0]
        assert f'`{dataset}`, 30 steps' in card and f'whole-split val loss {loss}' in card
        assert f'--export=hf' in card


@pytest.mark.parametrize('quantize', ['', 'nf4'])
def test_a_lora_and_a_qlora_run_export_merged(proj, quantize):
    """LoRA's update (on an NF4 base: QLoRA) is merged into the exported weights: transformers' greedy
    text is the one gpt.py samples after the export."""
    train(proj, '--out_dir=base')
    settings = [a for a in TINY if not a.startswith(('--n_layer', '--n_head', '--n_embd', '--block_size'))]
    lora = run(proj, 'gpt.py', *settings, '--init_from=base/ckpt.pt', '--lora_rank=4', '--learning_rate=2e-2',
               f'--quantize={quantize}', '--max_iters=10', '--max_new_tokens=0', '--out_dir=lora')
    assert lora.returncode == 0, lora.stderr
    r = exported(proj, 'lora/ckpt.pt', 'hf', 'hf-lora')
    sample = r.stdout.split('\n---------------')[0].rsplit('All: Speak', 1)[1]
    pipe = transformers.pipeline('text-generation', model=str(proj / 'hf-lora'), device='cpu')
    assert pipe('All: Speak', max_new_tokens=100, do_sample=False)[0]['generated_text'] == 'All: Speak' + sample
    card = (proj / 'hf-lora' / 'README.md').read_text()
    assert '10 steps' in card


def test_a_gpt2_folder_exports_as_it_came(tmp_path, proj):
    """A GPT-2-shaped folder (tests/gpt2_folder.py) in, our export out: the same logits, the same ids."""
    folder = tmp_path / 'gpt2'
    make(folder, CORPUS, vocab_size=300, n_layer=2, n_head=2, n_embd=32, n_positions=128)
    assert run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', f'--tokenizer_from={folder}',
               '--dataset=g').returncode == 0
    exported(proj, folder, 'hf', 'hf-g', '--dataset=g')
    theirs = transformers.AutoModelForCausalLM.from_pretrained(proj / 'hf-g').eval()
    original = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    idx = torch.randint(300, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (theirs(idx).logits - original(idx).logits).abs().max() < 1e-4
    ids = transformers.AutoTokenizer.from_pretrained(proj / 'hf-g')(CORPUS)['input_ids']
    assert ids == transformers.AutoTokenizer.from_pretrained(folder)(CORPUS)['input_ids']


def gguf_file(proj):
    """A char run on ASCII text, exported to GGUF; the run's checkpoint and the file's path."""
    (proj / 'ascii.txt').write_text(ASCII, encoding='utf-8')
    assert run(proj, 'prepare.py', f'--input={proj / "ascii.txt"}', '--dataset=ascii').returncode == 0
    train(proj, '--dataset=ascii', '--out_dir=run-ascii')
    r = exported(proj, 'run-ascii/ckpt.pt', 'gguf', 'gguf-ascii', '--dataset=ascii')
    return proj / 'run-ascii' / 'ckpt.pt', proj / 'gguf-ascii' / 'model.gguf', r


def test_gguf_holds_our_tensors_and_tokens(proj):
    gguf = pytest.importorskip('gguf')  # requirements.txt: --export=gguf's writer, and its reader
    ckpt_path, path, _ = gguf_file(proj)
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = gpt.GPT(gpt.GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    state = export.gpt2_state(model, ckpt['model_args'])
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {export.gguf_name(name) for name in state}
    for name, weight in state.items():
        stored = tensors[export.gguf_name(name)]
        assert np.array_equal(np.asarray(stored.data).reshape(weight.shape), weight.numpy())
    field = reader.fields['tokenizer.ggml.tokens']
    tokens = [bytes(field.parts[i]).decode('utf-8') for i in field.data]
    show = {b: c for c, b in gpt2_bytes().items()}
    assert tokens == [show[ord(c)] for c in ckpt['tokenizer']['chars']]
    arch = reader.fields['general.architecture']
    assert bytes(arch.parts[arch.data[0]]).decode() == 'gpt2'
    assert reader.fields['gpt2.context_length'].parts[-1][0] == 128


def bpe_gguf(proj):
    """A 300-token BPE of the tiny corpus, a run on it, exported to GGUF: the tokenizer and the file."""
    assert run(proj, 'prepare.py', f'--input={proj.parent / "corpus.txt"}', '--tokenizer=bpe', '--vocab_size=300',
               '--dataset=bpe').returncode == 0
    train(proj, '--dataset=bpe', '--out_dir=run-bpe')
    exported(proj, 'run-bpe/ckpt.pt', 'gguf', 'gguf-bpe', '--dataset=bpe')
    tok = from_description(json.loads((proj / 'data' / 'bpe' / 'meta.json').read_text())['tokenizer'])
    return tok, proj / 'gguf-bpe' / 'model.gguf'


def test_gguf_of_a_bpe_holds_its_merges(proj):
    gguf = pytest.importorskip('gguf')
    tok, path = bpe_gguf(proj)
    field = gguf.GGUFReader(path).fields['tokenizer.ggml.merges']
    merges = [bytes(field.parts[i]).decode('utf-8') for i in field.data]
    assert len(merges) == len(tok.merges) == 300 - 256
    _, expected = export.token_texts(tok.describe())
    assert merges == [f'{a} {b}' for a, b in expected]


def test_llama_cpp_runs_the_gguf_greedy_as_we_do(proj):
    """llama.cpp's own greedy tokens for 50 steps equal ours (its logits differ from ours by up to
    about 3e-4: its GELU is the tanh form, through a float16 table)."""
    llama_cpp = pytest.importorskip('llama_cpp', reason=NO_LLAMA)
    ckpt_path, path, _ = gguf_file(proj)
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = gpt.GPT(gpt.GPTConfig(**ckpt['model_args']))
    model.load_state_dict(ckpt['model'])
    tok = from_description(ckpt['tokenizer'])
    prompt = tok.encode('All: Speak')
    ours = greedy(model.eval(), torch.tensor([prompt]), 50)[0, len(prompt):].tolist()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, logits_all=True)
    assert llm.tokenize(b'All: Speak', add_bos=False, special=False) == prompt
    theirs = []
    llm.eval(prompt)
    for _ in range(50):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        theirs.append(token)
        llm.eval([token])
    assert theirs == ours


def sha(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in os.listdir(folder)}


@pytest.mark.parametrize('fmt, knobs, says', [
    ('hf', [], "this model has RoPE, RMSNorm, QK-norm"),  # the default model: its modern parts
    ('hf', CLASSIC + ['--residual=false'], 'no residual connections'),
    ('hf', CLASSIC + ['--relu2=true'], 'ReLU^2'),
    ('gguf', CLASSIC + ['--relu=true'], "ReLU (llama.cpp's gpt2 has GELU only; --export=hf takes it)"),
    ('gguf', CLASSIC, 'characters of several bytes'),  # the tiny corpus has some
])
def test_what_gpt2_lacks_is_refused_and_nothing_written(proj, fmt, knobs, says):
    r = run(proj, 'gpt.py', *TINY, *knobs, '--max_iters=5', '--max_new_tokens=0', '--out_dir=src')
    assert r.returncode == 0, r.stderr
    before = sha(proj / 'src')
    r = run(proj, 'gpt.py', '--init_from=src/ckpt.pt', '--max_iters=0', f'--export={fmt}', '--out_dir=exp')
    assert says in one_line_error(r)
    assert not (proj / 'exp').exists() and sha(proj / 'src') == before


def test_an_export_into_a_folder_with_files_or_a_bad_format_is_refused(trained):
    proj, _ = trained
    (proj / 'full').mkdir()
    (proj / 'full' / 'notes.txt').write_text('mine')
    for args, says in ((['--out_dir=out'], 'exists, and export never writes over a checkpoint'),
                       (['--out_dir=full'], 'holds files, and --export=hf writes only into a new or empty folder'),
                       (['--out_dir=new', '--quantize=int8'], 'leave --quantize out'),
                       (['--out_dir=new', '--export=HF'], "export must be one of")):
        before = sha(proj / 'out')
        r = run(proj, 'gpt.py', '--init_from=out/ckpt.pt', '--max_iters=0', '--export=hf', *args)
        assert says in one_line_error(r), args
        assert sha(proj / 'out') == before and (proj / 'full' / 'notes.txt').read_text() == 'mine'
        assert not (proj / 'new').exists()


def test_llama_cpp_tokenizes_our_bpe_as_we_do(proj):
    """llama.cpp's gpt2 pre-tokenizer against tokenizer.py's chunks, on the tiny corpus's val split."""
    llama_cpp = pytest.importorskip('llama_cpp', reason=NO_LLAMA)
    tok, path = bpe_gguf(proj)
    val = np.fromfile(proj / 'data' / 'bpe' / 'val.bin', dtype=np.uint16).tolist()
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert llm.tokenize(tok.decode(val).encode('utf-8'), add_bos=False, special=False) == val


def test_an_export_without_its_writer_says_what_to_install(trained, monkeypatch):
    proj, _ = trained
    train(proj, '--out_dir=classic')
    monkeypatch.setitem(sys.modules, 'tokenizers', None)  # import tokenizers now raises ImportError
    r = run(proj, 'gpt.py', '--init_from=classic/ckpt.pt', '--max_iters=0', '--export=hf', '--out_dir=g')
    assert 'needs the package tokenizers: pip install -r requirements.txt' in one_line_error(r)
    assert not (proj / 'g').exists()
