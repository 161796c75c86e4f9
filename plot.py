"""
Draw the loss curves of one or more gpt.py runs from their <out_dir>/log.csv, or what a
trained model's attention heads look at.

    python plot.py out/log.csv                                  # -> out/loss.png
    python plot.py out/log.csv out-bpe/log.csv --x=time --out=runs.png
    python plot.py out/log.csv --y=grad_norm                   # -> out/grad_norm.png
    python plot.py --attention=out/ckpt.pt --prompt="ROMEO: But soft"   # -> out/attention.png

Each run is labelled by its folder. Solid lines are the val loss of the `step N:` lines, faint dots
the train loss of the progress lines, and a star the final whole-split val loss (the last line
gpt.py prints after training). Losses are nats per token, which compares runs of one tokenizer;
--y=bpb shows val bits per byte instead, which compares any runs (char, BPE, nanoGPT's).
--y=grad_norm draws the gradient norm before clipping (with the share of steps clipped), and
--y=update_ratio each logged step's update over the weights' size (look.py's page shows both too).

--attention draws one heatmap for each head of each layer: row t is what the prompt's token t attends
to (its softmax weights over the tokens up to t), so the upper triangle is empty, the causal mask.
"""
import os
import sys
import textwrap

from checkpoint import read_log
from checks import die
from configurator import configure

# -----------------------------------------------------------------------------
x = 'tokens'  # the x axis: 'tokens' trained on, 'time' (seconds trained) or 'iter' (steps)
y = 'loss'  # 'loss' (nats a token), 'bpb' (val bits per byte), 'grad_norm' or 'update_ratio'
out = ''  # the PNG to write; empty means loss.png beside the first log
title = ''  # the figure's title; empty means none
ymax = 0.0  # the top of the y axis, to look closer at the end of runs; 0 fits every point
attention = ''  # a gpt.py checkpoint: draw its attention over the prompt instead of loss curves
prompt = 'ROMEO: But soft'  # the text whose attention --attention draws
# -----------------------------------------------------------------------------


X_LABELS = {'tokens': 'tokens trained on', 'time': 'seconds of training', 'iter': 'optimizer steps'}


def pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        die("matplotlib is missing: pip install matplotlib")
    return plt


def save(fig, target):
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    try:
        fig.savefig(target)
    # an unwritable place, or a name matplotlib has no format for
    except (OSError, ValueError) as e:
        die(f"cannot write '{target}': {e}")
    print(f"wrote {target}")


def attention_maps(path, text):
    """The prompt's tokens and every head's attention weights over them, (n_layer,
    n_head, T, T), from the explicit attention path of the model in the checkpoint
    (the same numbers as its fast path)."""
    import torch
    import gpt
    from checkpoint import load_checkpoint
    from loading import full_weights
    from tokenizer import description_in, from_description
    if not text:
        die("--prompt must not be empty")
    ckpt = load_checkpoint(path, 'gpt')  # one line for a missing, damaged or foreign file
    if not ckpt['model_args'].get('attention', True):
        die(f"{path} has no attention (attention=False): there is none to draw")
    tok = from_description(description_in(ckpt))
    if tok.unknown(text):
        die(f"the prompt has characters that are not in the model's vocabulary: {tok.unknown(text)}")
    model = gpt.GPT(gpt.GPTConfig(**ckpt['model_args'])).eval()
    model.load_state_dict(full_weights(path, ckpt, tok, None, gpt.GPT))
    ids = tok.encode(text)[-model.block_size:]  # what the model can see at once
    with torch.no_grad(), model.explicit_attention():  # the explicit path keeps its weights
        model(torch.tensor([ids]))
    att = torch.stack([b.attn.att[0] for b in model.blocks])  # (n_layer, n_head, T, T)
    return [tok.decode([i]) for i in ids], att.numpy()


def attention_title(text, tokens, inches):
    """What the picture shows, the prompt as the model saw it (cropped to
    block_size), wrapped to the figure."""
    shown = ''.join(tokens)
    what = f"the last {len(tokens)} tokens of the prompt, {shown!r}" if shown != text else repr(shown)
    return textwrap.fill(f"attention over {what}: row = the token that looks, column = what it sees",
                         width=int(inches * 13))  # characters of 9-point type per inch, about


def draw_attention():
    tokens, att = attention_maps(attention, prompt)
    n_layer, n_head, T, _ = att.shape
    plt = pyplot()
    size = (1.6 + 2.2 * n_head, 0.6 + 2.2 * n_layer)
    fig, axes = plt.subplots(n_layer, n_head, figsize=size, dpi=80, squeeze=False)
    # a newline and a space made visible
    labels = [t.replace('\n', '\u23ce').replace(' ', '\u2423') for t in tokens]
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(att[layer, head], cmap='Blues', vmin=0, vmax=1)
            ax.set_xticks(range(T), labels, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
    fig.suptitle(title or attention_title(prompt, tokens, 1.6 + 2.2 * n_head), fontsize=9)
    fig.tight_layout()
    save(fig, out or os.path.join(os.path.dirname(os.path.abspath(attention)), 'attention.png'))


def main(paths):
    if attention:
        return draw_attention()
    if not paths:
        die("give one or more logs: python plot.py out/log.csv [more/log.csv ...] [--x=tokens|time|iter]")
    if x not in ('tokens', 'time', 'iter'):
        die(f"--x must be tokens, time or iter, not '{x}'")
    if y not in ('loss', 'bpb', 'grad_norm', 'update_ratio'):
        die(f"--y must be loss, bpb, grad_norm or update_ratio, not '{y}'")
    if ymax < 0:
        die(f"--ymax must be > 0, or 0 to fit every point; not {ymax}")
    runs = [(os.path.basename(os.path.dirname(os.path.abspath(p))), read_log(p)) for p in paths]
    if y in ('grad_norm', 'update_ratio'):
        return draw_health(runs, paths[0])
    plt = pyplot()
    key = {'tokens': 'tokens', 'time': 'time_s', 'iter': 'iter'}[x]
    val_key = 'val_loss' if y == 'loss' else 'val_bpb'
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
    for i, (name, rows) in enumerate(runs):
        color = f'C{i}'
        train = [(r[key], r['train_loss']) for r in rows if r['kind'] == 'train' and y == 'loss']
        val = [(r[key], r[val_key]) for r in rows if r['kind'] == 'eval' and r[val_key] is not None]
        final = [(r[key], r[val_key]) for r in rows if r['kind'] == 'final' and r[val_key] is not None]
        if not val and not final:
            what = 'val loss' if y == 'loss' else 'val bpb (it is older than that column)'
            die(f"the log of '{name}' has no {what} to plot")
        if train:
            ax.plot(*zip(*train), '.', color=color, alpha=0.25, markersize=3)
        if val:
            label = f"{name}: val" + (f" (final {final[-1][1]:.3f})" if final else '')
            ax.plot(*zip(*val), '-', color=color, label=label)
        if final:
            ax.plot(*final[-1], '*', color=color, markersize=12)
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel('loss (nats per token)' if y == 'loss' else 'val bits per byte')
    ax.grid(alpha=0.3)
    if ymax > 0:
        ax.set_ylim(top=ymax)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, out or os.path.join(os.path.dirname(os.path.abspath(paths[0])), 'loss.png'))


def draw_health(runs, first):
    """--y=grad_norm or update_ratio: the run's health from its progress rows, on a log scale; the
    gradient norm (before clipping, a log interval's mean) with the share of steps clipped."""
    plt = pyplot()
    key = {'tokens': 'tokens', 'time': 'time_s', 'iter': 'iter'}[x]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=80)
    for i, (name, rows) in enumerate(runs):
        kept = [r for r in rows if r['kind'] == 'train' and r[y] is not None]
        if not kept:
            die(f"the log of '{name}' has no {y} (older than that column, or no progress rows yet)")
        label = name
        if y == 'grad_norm':
            share = sum(r['clipped'] for r in kept) / len(kept)
            label += f" (clipped in {100 * share:.0f}% of steps)"
        ax.plot([r[key] for r in kept], [r[y] for r in kept], '-', color=f'C{i}', label=label)
    ax.set_yscale('log')
    ax.set_xlabel(X_LABELS[x])
    names = {'grad_norm': 'gradient norm, before clipping', 'update_ratio': '|update| / |weights|, a step'}
    ax.set_ylabel(names[y])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out or os.path.join(os.path.dirname(os.path.abspath(first)), f'{y}.png'))


if __name__ == '__main__':
    args = sys.argv[1:]
    configure(globals(), [a for a in args if a.startswith('--')])
    main([a for a in args if not a.startswith('--')])
