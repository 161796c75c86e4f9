"""
Look inside a trained model: one self-contained HTML page for a checkpoint (or a GPT-2 folder) and a
text. Open it from disk; it needs no server and no network.

    python look.py out/ckpt.pt                       # -> out/look.html, over the start of the val split
    python look.py out/ckpt.pt --prompt="ROMEO: But soft" --out=romeo.html
    python look.py gpt2-shaped --dataset=shakespeare_gpt2   # a GPT-2 folder, on data of its tokens

The page shows the text with each token coloured by the model's loss on it. Pointing at a token
shows the model's top 5 next tokens, the true one's probability and rank, what the token attends
to in each head (drawn under the text), and the logit lens: the final norm and the head applied to
the residual stream after each block, so that the answer is seen forming block by block. Below:
each head's habits, the run's health from its log.csv (loss, learning rate, gradient norm and
clipping, update-to-weight ratio) and what the model is. The model is built as gpt.py builds it to
sample (LoRA merged, --quantize applied), in float32. Other gpt.py knobs (dataset, quantize, ...)
pass on to it.
"""
import base64
import json
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

import gpt
from checkpoint import LOG_COLUMNS, load_checkpoint, read_log, write_atomic
from checks import die, problems
from configurator import configure, knobs
from machine import start_processes
from roads import set_precision

# -----------------------------------------------------------------------------
prompt = ''  # the text to look at; '' takes a slice of the val split
text_file = ''  # or a file's text (its first tokens, up to the model's context)
n_tokens = 256  # at most this many tokens (and never more than the model's block_size)
out = ''  # the page to write; '' means look.html beside the checkpoint (or in the current folder)
windows = 0  # val windows for each head's habits; 0: as many as hold 16,384 tokens (256 of 64)
whole_split = True  # the whole val split's loss (minutes for a GPT-2-sized model on a CPU)
# -----------------------------------------------------------------------------
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'look_page.html')  # its HTML and JS
SLOT = '<script id="data" type="application/json">'  # where the page keeps its numbers
PLACEHOLDER = '/*DATA*/null'  # what stands there in the template


def build(path, text):
    """The model at path, as gpt.py builds it to sample, with its data and state (iter_num: the
    checkpoint's step), in float32, and what its Linears were quantized to ('none', or a QLoRA
    base's type). gpt.py's checks run on the knobs passed on, and the windows and the text are
    checked, before the model is built."""
    k = SimpleNamespace(**{**knobs(GPT_KNOBS), 'init_from': path, 'max_iters': 0, 'device': 'cpu'})
    configured = GPT_KNOBS.get('CONFIGURED', {})
    step = None  # a GPT-2 folder's
    quantized = k.quantize or 'none'
    T = 1024  # GPT-2's context, unless --block_size crops it
    if 'block_size' in configured:
        T = k.block_size
    if os.path.isfile(path):
        ckpt = load_checkpoint(path, 'gpt')  # one line for a missing, damaged or foreign file
        step = ckpt['iter_num']
        T = ckpt['model_args']['block_size']
        if not ckpt['model_args'].get('attention', True):
            die(f"{path} has no attention (attention=False): a position sees only itself, so the page would have "
                f"none to show; python plot.py on its log.csv draws how it learned")
        quantized = (ckpt.get('lora') or {}).get('quantize') or quantized  # a QLoRA base's
        if 'dataset' not in configured:  # a checkpoint knows its dataset
            k.dataset = ckpt['config'].get('dataset', k.dataset)
    for problem in problems(k, gpt.ROOT, configured):  # checks.py
        die(problem)
    data = gpt.load_data(k.dataset)
    held = max(1, (len(data.val.ids) - 1) // T)
    if windows > held:
        die(f"--windows={windows}: the val split holds {held:,} windows of {T} tokens")
    if text is not None and data.tok.unknown(text):
        die(f"the text has characters that are not in the model's vocabulary: {data.tok.unknown(text)}")
    if text is not None and len(data.tok.encode(text)) > min(n_tokens, T):
        print(f"note: the text is {len(data.tok.encode(text)):,} tokens; the page shows the first "
              f"{min(n_tokens, T)} (n_tokens {n_tokens}, the model's context {T})")
    run = start_processes('cpu')
    set_precision(run, 'float32', 'the page shows the model in float32')
    model, state = gpt.load_model(run, data, k, configured)
    state.iter_num = step
    return model, data, state, {'quantize': quantized, 'dataset': k.dataset}


def chosen_ids(model, data, text):
    """The tokens to look at, and the true next token of each (-1 where the text ends): the text
    (of --prompt or --text_file), or the start of the val split."""
    n = min(n_tokens, model.block_size)
    if text is not None:
        ids = data.tok.encode(text)[:n + 1]
    else:
        ids = [int(i) for i in data.val.ids[:n + 1]]
    if len(ids) < 2:
        die(f"the text of {text_file or '--prompt'} is shorter than two tokens")
    targets = ids[1:] + [-1] * (len(ids) <= n)
    return ids[:n], targets[:n]


@torch.no_grad()
def look(model, ids, targets):
    """Per token: loss, top 5, the true next token's probability and rank, attention (n_layer,
    n_head, T, T), and the logit lens (the top 3 after each block)."""
    residuals = []
    hooks = [b.register_forward_hook(lambda m, i, o: residuals.append(o)) for b in model.blocks]
    x = torch.tensor([ids])
    y = torch.tensor([targets])
    with model.explicit_attention():
        logits = model(x, y)[0][0].float()  # (T, vocab)
    for h in hooks:
        h.remove()
    logp = F.log_softmax(logits, dim=-1)
    loss = -logp.gather(1, y[0].clamp(min=0)[:, None])[:, 0]  # (T,)
    true_rank = (logp > logp.gather(1, y[0].clamp(min=0)[:, None])).sum(1)
    top = logp.exp().topk(5, dim=-1)
    lens = []  # after each block: ln_f and the head on the residual stream there
    for r in residuals:
        probs = F.softmax(model.lm_head(model.ln_f(r[0])).float(), dim=-1)  # (T, vocab)
        best = probs.topk(3, dim=-1)
        lens.append((best.indices, best.values, probs.gather(1, y[0].clamp(min=0)[:, None])[:, 0]))
    att = torch.stack([b.attn.att[0] for b in model.blocks])  # (n_layer, n_head, T, T)
    return loss, true_rank, top, lens, att


def page_data(model, data, state, ids, targets, path, what):
    """Everything the page shows, as one JSON-able dict; what: its 'quantize', 'dataset' and 'health'."""
    loss, rank, top, lens, att = look(model, ids, targets)
    tok = data.tok
    scored = [t for t in range(len(ids)) if targets[t] >= 0]
    bytes_of = tok.token_bytes
    tokens = []
    for t, i in enumerate(ids):
        top5 = [[int(j), round(float(p), 5)] for j, p in zip(top.indices[t], top.values[t])]
        lens_t = [[[int(j), round(float(p), 4)] for j, p in zip(ids_l[t], p_l[t])] for ids_l, p_l, _ in lens]
        token = {'id': i, 'top': top5, 'lens': lens_t}
        if targets[t] >= 0:
            token['loss'] = round(float(loss[t]), 5)
            token['next'] = targets[t]
            token['p_next'] = round(math.exp(-float(loss[t])), 6)
            token['rank'] = int(rank[t]) + 1
            # the true next token's probability, block by block
            token['lens_next'] = [round(float(p_next[t]), 5) for _, _, p_next in lens]
        tokens.append(token)
    used = set()  # the ids the page names
    for t in tokens:
        used |= {t['id'], *(j for j, _ in t['top']), *(j for row in t['lens'] for j, _ in row)}
    used |= {targets[t] for t in scored}
    mean = float(loss[scored].mean())
    n_bytes = sum(bytes_of[targets[t]] for t in scored)
    whole = (None, None)
    if whole_split:
        token_bytes = torch.tensor(bytes_of)
        batch = max(1, 4096 // model.block_size)  # windows at once: 64 of 64 tokens, 4 of GPT-2's 1,024
        whole = gpt.full_val_loss(model, data.val, model.block_size, 'cpu', batch, token_bytes=token_bytes)
    causal = bool(model.causal)
    # attention as bytes: round(w * 255); a causal model's rows stop at the diagonal
    rows = []
    for t in range(len(ids)):
        rows.append(att[:, :, t, :t + 1] if causal else att[:, :, t, :])
    flat = torch.cat([r.flatten(0, 1) for r in rows], dim=1)  # (n_layer * n_head, the rows in turn)
    codes = torch.round(flat * 255).clamp(0, 255).to(torch.uint8).numpy()
    ckpt_bytes = 0  # a folder's
    if os.path.isfile(path):
        ckpt_bytes = os.path.getsize(path)
    return {
        'tokens': tokens, 'vocab': {str(i): tok.decode([i]) for i in sorted(used)},
        'mean_loss': mean, 'bpb': float(loss[scored].sum()) / math.log(2) / max(n_bytes, 1),
        'n_layer': len(model.blocks), 'n_head': model.blocks[0].attn.n_head, 'causal': causal,
        'attention': base64.b64encode(codes.tobytes()).decode(),
        'what': {'model': path, 'step': state.iter_num,
                 'parameters': sum(p.numel() for p in model.parameters()), 'file_bytes': ckpt_bytes,
                 'model_args': state.model_args,
                 'tokenizer': f"{tok.describe()['type']}, {tok.vocab_size} tokens",
                 'dataset': what['dataset'], 'quantize': what['quantize'],
                 'whole_val_loss': whole[0], 'whole_val_bpb': whole[1]},
        'heads': head_habits(model, data.val),
        'health': what['health'],
    }


@torch.no_grad()
def head_habits(model, split):
    """Each head's mean attention on the token itself and on the one before, over `windows` windows
    of the split (drawn with seed 0), as {'self': (n_layer, n_head), 'previous': ...}, and what an
    even spread would give."""
    T = model.block_size
    n = windows or min(max(1, 16384 // T), max(1, (len(split.ids) - 1) // T))
    starts = split.random_starts((n,), T, torch.Generator().manual_seed(0))
    windows_ids = torch.stack([torch.from_numpy(split.ids[s:s + T].astype(np.int64)) for s in starts])
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    self_, previous = torch.zeros(n_layer, n_head), torch.zeros(n_layer, n_head)
    t = torch.arange(T)
    # a batch whose attention weights, which every block keeps, stay near 16M numbers
    for x in torch.split(windows_ids, max(1, 2**24 // (T * T * n_head * n_layer))):
        with model.explicit_attention():
            model(x, x)
        for layer, block in enumerate(model.blocks):
            att = block.attn.att  # (B, n_head, T, T)
            self_[layer] += att[..., t, t].mean(dim=-1).sum(dim=0)
            previous[layer] += att[..., t[1:], t[1:] - 1].mean(dim=-1).sum(dim=0)
    # what attention spread evenly over the keys each token sees would give
    seen = torch.arange(1, T + 1.0)
    if not model.causal:
        seen = torch.full((T,), float(T))
    return {'self': (self_ / n).tolist(), 'previous': (previous / n).tolist(), 'windows': n, 'tokens': T,
            'uniform_self': (1 / seen).mean().item(), 'uniform_previous': (1 / seen[1:]).mean().item()}


def health(path):
    """The run's log.csv beside the checkpoint, as columns ({} where there is none)."""
    log = os.path.join(os.path.dirname(os.path.abspath(path)), 'log.csv')
    if not os.path.isfile(log):
        return {}
    rows = read_log(log)
    columns = {}
    for kind in ('train', 'eval'):
        kept = [r for r in rows if r['kind'] == kind]
        columns[kind] = {k: [r[k] for r in kept] for k in LOG_COLUMNS[1:]}
    return columns


def attention_of(data, n_tokens_seen):
    """The page's attention back from its bytes: (n_layer, n_head) lists of rows (for tests)."""
    codes = np.frombuffer(base64.b64decode(data['attention']), dtype=np.uint8)
    per_head = codes.reshape(data['n_layer'] * data['n_head'], -1) / 255
    rows, start = [], 0
    for t in range(n_tokens_seen):
        width = t + 1 if data['causal'] else n_tokens_seen
        rows.append(per_head[:, start:start + width])
        start += width
    return rows


def is_page(path):
    """Whether the file at path is a page look.py wrote (its data in place of the placeholder)."""
    with open(path, encoding='utf-8', errors='replace') as f:
        html = f.read()
    return SLOT in html and PLACEHOLDER not in html


def write_page(data, target):
    """The page: look_page.html with the data inside, written whole. One file, nothing fetched."""
    with open(PAGE, encoding='utf-8') as f:
        html = f.read()
    if html.count(PLACEHOLDER) != 1:
        die(f"{PAGE} has lost its placeholder {PLACEHOLDER}: restore it (git checkout look_page.html)")
    payload = json.dumps(data, separators=(',', ':')).replace('</', '<\\/')
    html = html.replace(PLACEHOLDER, payload)
    write_atomic({target: html.encode('utf-8')})
    print(f"wrote {target} ({len(html) / 2**20:.1f} MiB): open it in a browser")


def target_of(path):
    """The page's file: --out, or look.html beside the checkpoint; refused in one line where it
    would write over a file that is not a page of look.py's, or into a folder that isn't there."""
    target = out or 'look.html'
    if not out and os.path.isfile(path):  # beside the checkpoint
        target = os.path.join(os.path.dirname(os.path.abspath(path)), 'look.html')
    if not target.endswith('.html'):
        die(f"--out must be an .html file, not '{target}'")
    if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        die(f"--out={target}: there is no folder {os.path.dirname(target)}")
    if os.path.exists(target) and (not os.path.isfile(target) or not is_page(target)):
        die(f"{target} exists and is not a page that look.py wrote: give another --out")
    return target


def text_of():
    """The text to look at: --prompt's, --text_file's, or None (the start of the val split)."""
    if prompt and text_file:
        die("give --prompt or --text_file, not both")
    if not text_file:
        return prompt or None
    if not os.path.isfile(text_file):
        die(f"--text_file={text_file}: there is no such file")
    with open(text_file, encoding='utf-8', errors='replace') as f:
        return f.read()


def main(paths):
    if len(paths) != 1:
        die("give one model: python look.py out/ckpt.pt (or a GPT-2 folder) [--prompt=TEXT] [--out=X.html]")
    if n_tokens < 2 or windows < 0:
        die(f"n_tokens must be at least 2 (not {n_tokens}), and windows at least 0 (not {windows})")
    path = paths[0]
    if os.path.isfile(os.path.join(path, 'ckpt.pt')):
        die(f"{path} is a run's folder: give its checkpoint, {os.path.join(path, 'ckpt.pt')} (or best.pt)")
    if not os.path.exists(path) and not path.startswith('gpt2'):
        die(f"there is no file or folder {path}: give a checkpoint (out/ckpt.pt) or a GPT-2 folder")
    target = target_of(path)
    text = text_of()
    run_health = health(path)  # a damaged log.csv is refused before the work
    if os.path.exists(path):  # a file or a folder here; else a hub name (gpt2, ...)
        path = os.path.abspath(path)
    model, data, state, what = build(path, text)
    ids, targets = chosen_ids(model, data, text)
    what['health'] = run_health
    write_page(page_data(model, data, state, ids, targets, paths[0], what), target)


# gpt.py's knobs that look.py passes on: what it looks at and how the model is made to sample
PASSED = ('dataset', 'quantize', 'int8_road', 'lora_rank', 'lora_alpha', 'block_size')
GPT_KNOBS = dict(vars(gpt))  # gpt.py's knobs as look.py runs it: configure_both() sets them


def configure_both(options):
    """look.py's own knobs, then those of gpt.py's it passes on (PASSED), from --key=value
    options. Any other knob of gpt.py's would be ignored, so it is refused."""
    if '--help' in options:
        print(__doc__.strip() + f"\n\ngpt.py's knobs it passes on: {', '.join(PASSED)}\n")
        configure(globals(), ['--help'])
    global GPT_KNOBS
    own, theirs = [], []
    for option in options:
        key = option.split('=')[0].lstrip('-')
        if key in PASSED:
            theirs.append(option)
        elif key in knobs(vars(gpt)) and key not in knobs(globals()):
            die(f"--{key} is gpt.py's, and look.py does not use it (the page shows the model in float32 on "
                f"the CPU); of gpt.py's knobs it takes {', '.join(PASSED)}")
        else:
            own.append(option)
    configure(globals(), own)
    GPT_KNOBS = dict(vars(gpt))  # a copy: gpt's own globals stay as they are
    configure(GPT_KNOBS, theirs)


if __name__ == '__main__':
    args = sys.argv[1:]
    configure_both([a for a in args if a.startswith('--')])
    main([a for a in args if not a.startswith('--')])
