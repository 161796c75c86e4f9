"""
GPT-2's weights and tokenizer, for gpt.py's --init_from and prepare.py's --tokenizer_from: a hub
name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), fetched once into the standard Hugging Face cache by
huggingface_hub, or a local folder as save_pretrained writes it (config.json, model.safetensors,
vocab.json, merges.txt): the way without a network. The weights are read with safetensors, never
with pickle. gpt.py and prepare.py import this only on those knobs; it never imports gpt.

GPT-2 is gpt.py's GPT with nanoGPT's parts: learned positions, LayerNorm, biases, GELU, a tied
head. Held up against transformers' GPT2LMHeadModel (tests/test_gpt2.py), it differs in three
ways, each handled here:
- its GELU is the tanh approximation (gelu_tanh=True);
- its tied head has no bias (gpt.py gives a tied head none);
- its Linears are stored transposed: Conv1D keeps (in, out), nn.Linear (out, in).
"""
import json
import os

from checks import die
from tokenizer import BPETokenizer

SIZES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
HUB = {name: f'openai-community/{name}' for name in SIZES}
FILES = ('config.json', 'model.safetensors', 'vocab.json', 'merges.txt')


def folder_of(name):
    """The folder with GPT-2's four files: the hub's copy in the cache (fetched the first time), or
    the folder given (or the folder of the model.safetensors given)."""
    if name in HUB:
        try:
            from huggingface_hub import snapshot_download
            name = snapshot_download(HUB[name], allow_patterns=list(FILES))
        except ImportError:
            die("GPT-2's files need huggingface_hub and safetensors: "
                "pip install -r requirements.txt")
        except Exception as e:  # no network, or the hub refused: nothing was written but the cache
            die(f"could not fetch {HUB[name]} from the Hugging Face hub ({type(e).__name__}); "
                f"without a network, copy a folder with its {', '.join(FILES)} here and give its path: "
                f"--init_from=FOLDER, --tokenizer_from=FOLDER")
    folder = os.path.dirname(name) if name.endswith('.safetensors') else name
    missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        die(f"{folder} lacks {', '.join(missing)}: a GPT-2 folder holds {', '.join(FILES)}, "
            f"as save_pretrained writes them")
    return folder


def gpt2_tokenizer(name):
    """GPT-2's byte-level BPE (tokenizer.py's class) from the folder's vocab.json and merges.txt."""
    folder = folder_of(name)
    try:
        vocab, merges = os.path.join(folder, 'vocab.json'), os.path.join(folder, 'merges.txt')
        return BPETokenizer.from_files(vocab, merges)
    except (OSError, ValueError) as e:
        die(f"{folder} has no readable GPT-2 tokenizer ({e})")


def architecture(cfg, block_size):
    """gpt.py's model_args for a config.json, or die naming what is not GPT-2."""
    if not isinstance(cfg, dict):
        die(f"config.json holds a {type(cfg).__name__}, not GPT-2's settings (a JSON object)")
    n_embd = cfg.get('n_embd', 0)
    activation = cfg.get('activation_function', 'gelu_new')
    problems = {'model_type': cfg.get('model_type') == 'gpt2',
                'activation_function': activation in ('gelu_new', 'gelu'),
                'n_inner': cfg.get('n_inner') in (None, 4 * n_embd),
                'layer_norm_epsilon': cfg.get('layer_norm_epsilon', 1e-5) == 1e-5,
                'scale_attn_weights': cfg.get('scale_attn_weights', True),
                'scale_attn_by_inverse_layer_idx': not cfg.get('scale_attn_by_inverse_layer_idx'),
                'add_cross_attention': not cfg.get('add_cross_attention', False),
                'tie_word_embeddings': cfg.get('tie_word_embeddings', True)}
    wrong = [k for k, ok in problems.items() if not ok]
    if wrong:
        differ = ', '.join(f'{k}={cfg.get(k)!r}' for k in wrong)
        die(f"config.json describes another architecture than GPT-2's ({differ})")
    sizes = ('vocab_size', 'n_positions', 'n_layer', 'n_head', 'n_embd')
    unsized = [k for k in sizes if not isinstance(cfg.get(k), int) or cfg[k] <= 0]
    if unsized:
        die(f"config.json lacks GPT-2's sizes as positive whole numbers: {', '.join(unsized)}")
    if cfg['n_embd'] % cfg['n_head']:
        die(f"config.json's n_embd ({cfg['n_embd']}) is not a multiple "
            f"of its n_head ({cfg['n_head']})")
    if block_size and block_size > cfg['n_positions']:
        die(f"block_size {block_size} is longer than GPT-2's {cfg['n_positions']} positions")
    # gpt.GPTConfig's defaults are nanoGPT's GPT-2: GPT-2 differs only in its biases and its GELU
    return dict(vocab_size=cfg['vocab_size'], block_size=block_size or cfg['n_positions'],
                n_layer=cfg['n_layer'], n_head=cfg['n_head'], n_embd=n_embd, bias=True,
                gelu_tanh=activation == 'gelu_new')


def shape_of(name, C, V, T):
    """The shape of one of GPT-2's weights (gpt.py's names), for n_embd C,
    vocab_size V and block_size T."""
    shapes = {'wte.weight': (V, C), 'wpe.weight': (T, C), 'lm_head.weight': (V, C),
              'attn.c_attn.weight': (3 * C, C), 'attn.c_attn.bias': (3 * C,),
              'attn.c_proj.weight': (C, C), 'mlp.c_fc.weight': (4 * C, C),
              'mlp.c_fc.bias': (4 * C,), 'mlp.c_proj.weight': (C, 4 * C)}
    part = name.split('.', 2)[-1] if name.startswith('blocks.') else name
    return shapes.get(part, (C,))  # the norms' weights and biases, and the projections' biases


# GPT-2's weights: Hugging Face's names (after 'transformer.') beside ours, and whether the matrix is
# transposed (GPT-2's Conv1D keeps (in, out), nn.Linear (out, in)). In block i, ours are Hugging
# Face's with h.{i}. read as blocks.{i}. The loader reads the table forwards; an export to Hugging
# Face's format runs it backwards. The head is the token embedding (tied).
WEIGHTS = {'wte.weight': False, 'wpe.weight': False, 'ln_f.weight': False, 'ln_f.bias': False}
BLOCK_WEIGHTS = {'ln_1.weight': False, 'ln_1.bias': False, 'ln_2.weight': False, 'ln_2.bias': False,
                 'attn.c_attn.weight': True, 'attn.c_attn.bias': False,
                 'attn.c_proj.weight': True, 'attn.c_proj.bias': False,
                 'mlp.c_fc.weight': True, 'mlp.c_fc.bias': False,
                 'mlp.c_proj.weight': True, 'mlp.c_proj.bias': False}


def weight_names(n_layer):
    """Every weight of a GPT-2 of n_layer blocks: (Hugging Face's name, ours, transposed)."""
    names = [(name, name, transposed) for name, transposed in WEIGHTS.items()]
    for i in range(n_layer):
        for name, transposed in BLOCK_WEIGHTS.items():
            names.append((f'h.{i}.{name}', f'blocks.{i}.{name}', transposed))
    return names


def load_gpt2(name, tok, dataset, block_size=None):
    """GPT-2 as gpt.py's checkpoints are: {'model' (gpt.py's names), 'model_args',
    'tokenizer', ...}, and the model.safetensors it came from (a LoRA run pins it by
    sha256). block_size crops the position table."""
    folder = folder_of(name)
    try:
        with open(os.path.join(folder, 'config.json'), encoding='utf-8') as f:
            model_args = architecture(json.load(f), block_size)
        from safetensors.torch import load_file
        tensors = load_file(os.path.join(folder, 'model.safetensors'))
    # a truncated file: SafetensorError, which is no ValueError in every version
    except Exception as e:
        die(f"{folder} has no readable GPT-2 "
            f"(config.json or model.safetensors: {type(e).__name__} {e})")
    ours = gpt2_tokenizer(folder)
    if ours.vocab_size < model_args['vocab_size']:
        die(f"{folder}'s vocab.json has {ours.vocab_size} tokens, "
            f"fewer than its model's {model_args['vocab_size']}")
    if tok is not None and tok.describe() != ours.describe():
        die(f"dataset '{dataset}' was prepared with another tokenizer than {name}'s: encode your text "
            f"with its own, python prepare.py --input=FILE --dataset=NAME --tokenizer_from={name}")
    theirs = {}
    for k, v in tensors.items():
        k = k.removeprefix('transformer.')
        if k.endswith(('.attn.bias', '.attn.masked_bias')) or k == 'lm_head.weight':
            continue  # the causal mask, kept as a buffer; the head is the token embedding (tied)
        theirs[k] = v
    names = weight_names(model_args['n_layer'])
    if set(theirs) != {hf for hf, _, _ in names}:
        odd = sorted(set(theirs) ^ {hf for hf, _, _ in names})
        die(f"{folder}/model.safetensors does not hold the GPT-2 of its config.json "
            f"({len(odd)} names differ: {odd[:3]})")
    weights = {}
    for hf, name, transposed in names:
        weights[name] = (theirs[hf].t() if transposed else theirs[hf]).contiguous()
    weights['wpe.weight'] = weights['wpe.weight'][:model_args['block_size']]
    weights['lm_head.weight'] = weights['wte.weight']
    C, V, T = model_args['n_embd'], model_args['vocab_size'], model_args['block_size']
    for k, v in weights.items():
        want = shape_of(k, C, V, T)
        if tuple(v.shape) != want:
            die(f"{folder}/model.safetensors does not hold the GPT-2 of its config.json "
                f"({k} is {tuple(v.shape)}; n_embd={C}, vocab_size={V} need {want})")
    config = {'dataset': None, 'init_from': name}
    ckpt = {'model_type': 'gpt', 'model': weights, 'model_args': model_args,
            'tokenizer': ours.describe(), 'config': config, 'template': {}}
    return ckpt, os.path.join(folder, 'model.safetensors')
