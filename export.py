"""
Your model where everyone else's run: a Hugging Face transformers folder (--export=hf) or one GGUF
file for llama.cpp (--export=gguf). gpt.py imports this only on those knobs; it never imports gpt.

    python gpt.py --init_from=out/ckpt.pt --max_iters=0 --export=hf --out_dir=out-hf
    python gpt.py --init_from=out/ckpt.pt --max_iters=0 --export=gguf --out_dir=out-gguf

Both formats hold GPT-2's architecture (transformers' GPT2LMHeadModel, llama.cpp's gpt2), so a
model exports when GPT-2 can compute exactly what it computes:
- GPT-2's parts and nanoGPT's (config/classic.py), GPT-2 itself, its fine-tunes (LoRA merged first);
- the lecture's parts, each as a GPT-2 setting or as weights: ReLU (activation_function; transformers
  only, llama.cpp's gpt2 has GELU alone), no biases (zero biases), an untied head (its own matrix),
  no positions (a zero position table), a block without attention or feed-forward network (zero
  weights: that half adds nothing);
- an untied head's bias, which GPT-2's head lacks: logits = W (g * n + beta) + b, so a beta' with
  W beta' = W beta + b does the same; it exists when W's rows are independent (n_embd >= vocab_size).
RoPE, RMSNorm, QK-norm, ReLU^2, no residuals, no norms and no causal mask are not GPT-2's: refused.

The tokenizer goes too: the character vocabulary as a BPE with no merges, this project's byte-level
BPE and GPT-2's own as byte-level BPEs. Their token texts write each byte as GPT-2's vocab.json does.
"""
import json
import os
import shlex

import torch

from checks import die
from checkpoint import write_atomic
from gpt2 import shape_of, weight_names
from lora import merge_lora
from tokenizer import from_description, gpt2_bytes

# the parts GPT-2 lacks: a GPTConfig field, the value GPT-2 has, and the part's name
NOT_GPT2 = (('rope', False, 'RoPE'), ('rmsnorm', False, 'RMSNorm'), ('qk_norm', False, 'QK-norm'),
            ('relu2', False, 'ReLU^2'), ('residual', True, 'no residual connections'),
            ('norm', True, 'no norms'), ('causal', True, 'no causal mask'))
# llama.cpp's names for ours: outside the blocks, and in block i ('blk.{i}.' for 'blocks.{i}.')
GGUF_NAMES = {'wte': 'token_embd', 'wpe': 'position_embd', 'ln_f': 'output_norm',
              'lm_head': 'output'}
GGUF_BLOCK_NAMES = {'ln_1': 'attn_norm', 'attn.c_attn': 'attn_qkv', 'attn.c_proj': 'attn_output',
                    'ln_2': 'ffn_norm', 'mlp.c_fc': 'ffn_up', 'mlp.c_proj': 'ffn_down'}


def problem(args, tok_desc, fmt):
    """Why the model of these model_args and tokenizer can't be written as fmt, or None."""
    parts = [name for field, gpt2, name in NOT_GPT2 if args.get(field, gpt2) != gpt2]
    if fmt == 'gguf' and args.get('relu'):
        parts.append("ReLU (llama.cpp's gpt2 has GELU only; --export=hf takes it)")
    if parts:
        return (f"--export={fmt} writes GPT-2's architecture, and this model has "
                f"{', '.join(parts)}: a model of GPT-2's parts exports "
                f"(python gpt.py config/classic.py trains one)")
    if args['bias'] and not args['tie_weights'] and args['n_embd'] < args['vocab_size']:
        return (f"this model's head has a bias, which GPT-2's lacks; it moves into the final "
                f"norm's bias only when n_embd >= vocab_size "
                f"(here {args['n_embd']} < {args['vocab_size']})")
    chars = tok_desc.get('chars', [])
    if fmt == 'gguf' and any(ord(c) > 127 for c in chars):
        wide = [c for c in chars if ord(c) > 127]
        return (f"llama.cpp reads a character vocabulary as bytes, and this one has characters of "
                f"several bytes ({''.join(wide[:10])}): --export=hf takes it")
    return None


def gpt2_state(model, args):
    """Our weights as GPT-2 has them, under our names: a part this model lacks gets the weights
    that make it do nothing (zero biases, a zero position table, zero attention or feed-forward
    weights under a norm of ones), the head is always there, and its bias moves into ln_f's."""
    ours = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    C, V, T = args['n_embd'], args['vocab_size'], args['block_size']
    state = {}
    for _, name, _ in weight_names(args['n_layer']):
        if name in ours:
            state[name] = ours[name]
        elif name.endswith('weight') and 'ln_' in name:
            state[name] = torch.ones(shape_of(name, C, V, T))
        else:
            state[name] = torch.zeros(shape_of(name, C, V, T))
    state['lm_head.weight'] = ours['lm_head.weight']
    if 'lm_head.bias' in ours:  # W delta = b, solved in float64: the same logits, or refused
        W, b = ours['lm_head.weight'].double(), ours['lm_head.bias'].double()
        delta = torch.linalg.lstsq(W, b.unsqueeze(1)).solution.squeeze(1)
        state['ln_f.bias'] = (state['ln_f.bias'].double() + delta).float()
        error = (W.float() @ delta.float() - b.float()).abs().max().item()
        if error > 1e-4:
            die(f"this model's head bias does not fit into the final norm's bias (it would "
                f"move the logits by up to {error:.1e}): it can't export exactly")
    return state


def hf_tokenizer(tok_desc, block_size):
    """tokenizer.json and tokenizer_config.json, as bytes. tokenizer.json is written out as the
    plain data it is (a BPE model, how text is cut before it, how ids become text again), then
    read and written by the tokenizers library, which checks it."""
    from tokenizers import Tokenizer
    texts, merges = token_texts(tok_desc)
    byte_level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                  'use_regex': True}
    cut, decoder = None, {**byte_level, 'add_prefix_space': True}  # tokenizers' decoder defaults
    if tok_desc['type'] == 'char':  # a token a character: the text is one word, never merged
        decoder = {'type': 'Fuse'}
    elif 'ids' in tok_desc:  # GPT-2's own: its pattern is ByteLevel's
        cut = byte_level
    else:  # ours: tokenizer.py's chunks, then bytes as GPT-2 writes them
        split = {'type': 'Split', 'pattern': {'Regex': tok_desc['pattern']}, 'behavior': 'Isolated',
                 'invert': False}
        cut = {'type': 'Sequence', 'pretokenizers': [split, {**byte_level, 'use_regex': False}]}
    specials = []
    for text, i in tok_desc.get('specials', {}).items():
        specials.append({'id': i, 'content': text, 'single_word': False, 'lstrip': False,
                         'rstrip': False, 'normalized': False, 'special': True})
    model = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
             'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False,
             'ignore_merges': False, 'vocab': texts, 'merges': [list(pair) for pair in merges]}
    tokenizer = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': specials,
                 'normalizer': None, 'pre_tokenizer': cut, 'post_processor': None,
                 'decoder': decoder, 'model': model}
    checked = Tokenizer.from_str(json.dumps(tokenizer)).to_str()
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'model_max_length': block_size,
              'clean_up_tokenization_spaces': False}
    for text in tok_desc.get('specials', {}):
        config |= {'bos_token': text, 'eos_token': text}
    return checked.encode('utf-8'), json.dumps(config, indent=2).encode('utf-8')


def token_texts(tok_desc):
    """{text: id} of every token, bytes written as GPT-2's vocab.json writes them, and the merges as
    (text, text) pairs, in the order they were learned."""
    tok = from_description(tok_desc)
    if tok_desc['type'] == 'char':
        return {c: i for i, c in enumerate(tok.chars)}, []
    show = {b: c for c, b in gpt2_bytes().items()}
    texts = {}
    for i, piece in enumerate(tok.vocab):
        texts[''.join(show[b] for b in piece)] = i
    for text, i in tok.specials.items():
        texts[text] = i
    if len(texts) != tok.vocab_size:
        die("this BPE has two tokens of the same bytes: no tokenizer.json can hold it")
    pieces = [tok.vocab[tok.number[t]] for t in range(len(tok.number))]  # our token number -> bytes
    merges = []
    for a, b in tok.merges:
        merges.append((''.join(show[x] for x in pieces[a]), ''.join(show[x] for x in pieces[b])))
    return texts, merges


def hf_files(model, args, tok_desc):
    """{file name: bytes} of a folder that GPT2LMHeadModel and AutoTokenizer load."""
    from safetensors.torch import save
    state = gpt2_state(model, args)
    tensors = {}
    for hf, name, transposed in weight_names(args['n_layer']):  # the loader's table, backwards
        tensors['transformer.' + hf] = (state[name].t() if transposed else state[name]).contiguous()
    if not args['tie_weights']:
        tensors['lm_head.weight'] = state['lm_head.weight'].contiguous()
    specials = list(tok_desc.get('specials', {}).values())
    eos = specials[0] if specials else None
    activation = 'gelu_new' if args['gelu_tanh'] else 'gelu'  # transformers': tanh's form, erf's
    if args['relu']:
        activation = 'relu'
    config = {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
              'vocab_size': args['vocab_size'], 'n_positions': args['block_size'],
              'n_embd': args['n_embd'], 'n_layer': args['n_layer'], 'n_head': args['n_head'],
              'n_inner': None, 'activation_function': activation, 'layer_norm_epsilon': 1e-5,
              'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0,
              'tie_word_embeddings': args['tie_weights'], 'bos_token_id': eos, 'eos_token_id': eos,
              'dtype': 'float32'}
    generation = {'bos_token_id': eos, 'eos_token_id': eos, 'pad_token_id': eos, 'do_sample': True}
    tokenizer, tokenizer_config = hf_tokenizer(tok_desc, args['block_size'])
    return {'config.json': json.dumps(config, indent=2).encode('utf-8'),
            'generation_config.json': json.dumps(generation, indent=2).encode('utf-8'),
            'model.safetensors': save(tensors, metadata={'format': 'pt'}),
            'tokenizer.json': tokenizer, 'tokenizer_config.json': tokenizer_config}


def gguf_writer(model, args, tok_desc, name):
    """A function that writes the GGUF file (gguf, llama.cpp's own writer) to an open file."""
    import gguf
    state = gpt2_state(model, args)
    texts, merges = token_texts(tok_desc)
    if tok_desc['type'] == 'char':  # each character as the byte it is, written as GPT-2 does
        show = {b: c for c, b in gpt2_bytes().items()}
        texts = {show[ord(c)]: i for c, i in texts.items()}
    tokens = sorted(texts, key=texts.get)
    specials = tok_desc.get('specials', {})

    def write(f):  # gguf opens the file by name: write_atomic's temp file, fsynced and renamed
        writer = gguf.GGUFWriter(f.name, 'gpt2')
        writer.add_name(name)
        writer.add_context_length(args['block_size'])
        writer.add_embedding_length(args['n_embd'])
        writer.add_feed_forward_length(4 * args['n_embd'])
        writer.add_block_count(args['n_layer'])
        writer.add_head_count(args['n_head'])
        writer.add_layer_norm_eps(1e-5)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_tokenizer_model('gpt2')
        writer.add_tokenizer_pre('gpt-2')
        writer.add_token_list(tokens)
        control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
        writer.add_token_types([control if t in specials else normal for t in tokens])
        writer.add_token_merges([f'{a} {b}' for a, b in merges] or [no_merge(texts)])
        writer.add_add_bos_token(False)
        for text, i in specials.items():  # GPT-2's <|endoftext|>: both ends
            writer.add_bos_token_id(i)
            writer.add_eos_token_id(i)
        for ours, tensor in state.items():
            writer.add_tensor(gguf_name(ours), tensor.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return write


def no_merge(texts):
    """A merge that can never apply: of a byte that no token holds. llama.cpp's gpt2 tokenizer needs
    a list of merges, and gguf writes no empty list; a character vocabulary has none of its own."""
    unused = [c for c in gpt2_bytes() if c not in texts]
    return f'{unused[0]} {unused[0]}'


def gguf_name(ours):
    """llama.cpp's name for one of ours: blocks.3.attn.c_attn.weight is blk.3.attn_qkv.weight."""
    part, kind = ours.rsplit('.', 1)
    if not part.startswith('blocks.'):
        return f'{GGUF_NAMES[part]}.{kind}'
    _, i, layer = part.split('.', 2)
    return f'blk.{i}.{GGUF_BLOCK_NAMES[layer]}.{kind}'


def model_card(fmt, state, loss, bpb, settings):
    """README.md of the export: what the model is, what it learned from, how well, how made."""
    config, args = state.made.get('config', {}), state.model_args
    trained = f"`{config.get('dataset')}`, {state.made.get('iter_num', 0)} steps"
    if config.get('dataset') is None:  # GPT-2's own files
        trained = f"GPT-2's own weights ({config.get('init_from')})"
    knobs = [f"--{name}={shlex.quote(str(value))}" for name, value in settings.items()]
    command = ' '.join(['python gpt.py', *knobs])
    where = {'hf': 'transformers', 'gguf': 'GGUF, for llama.cpp'}[fmt]
    lines = [f"# A GPT exported from minigpt ({where})",
             '',
             f"- architecture: GPT-2's: {args['n_layer']} blocks, {args['n_head']} heads, "
             f"{args['n_embd']} wide, {args['block_size']} positions, {args['vocab_size']} tokens "
             f"({state.tokenizer['type']})",
             f"- trained on: {trained}",
             f"- whole-split val loss {loss:.4f}, val bpb {bpb:.4f} (gpt.py's, before the export)",
             f"- made by: `{command}`",
             '']
    return '\n'.join(lines).encode('utf-8')


def export(model, state, out_dir, k, configured, score, master=True):
    """Write the model as k.export asks into out_dir, with a model card (configured: the knobs the
    command set; score(model): its whole-split val loss and bpb); return the line that says so.
    What GPT-2's architecture can't hold is refused first, with nothing written. Every process
    calls it: master writes."""
    fmt, args = k.export, state.model_args
    settings = {name: getattr(k, name) for name in configured}  # the command, for the card
    refusal = problem(args, state.tokenizer, fmt)
    if refusal:
        die(refusal)
    try:  # the writers, in requirements.txt
        if fmt == 'hf':
            import safetensors  # noqa: F401
            import tokenizers  # noqa: F401
        else:
            import gguf  # noqa: F401
    except ImportError as e:
        die(f"--export={fmt} needs the package {e.name}: pip install -r requirements.txt")
    merge_lora(model)  # on a QLoRA model too: its base dequantized, the update added, in float32
    if not master:
        return ''
    loss, bpb = score(model.eval())
    card = model_card(fmt, state, loss, bpb, settings)
    if fmt == 'hf':
        files = hf_files(model, args, state.tokenizer)
        files['README.md'] = card
        write_atomic({os.path.join(out_dir, name): content for name, content in files.items()})
        return f"wrote {out_dir}: GPT2LMHeadModel and its tokenizer ({', '.join(files)})"
    path = os.path.join(out_dir, 'model.gguf')
    name = os.path.basename(os.path.normpath(out_dir))
    write_atomic({path: gguf_writer(model, args, state.tokenizer, name),
                  os.path.join(out_dir, 'README.md'): card})
    return f"wrote {path}: llama.cpp's gpt2 architecture, float32, and its tokenizer"
