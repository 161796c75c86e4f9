"""
LoRA for gpt.py's --lora_rank: a frozen Linear plus a trainable low-rank update, in minLoRA's shape.

add_lora wraps the Linears in the blocks from outside (the model's code does not change),
merge_lora folds the updates back into plain Linears. A LoRA checkpoint holds only the adapters,
with the path and sha256 of the base checkpoint they were trained on. gpt.py imports this only
when a run has LoRA. It never imports gpt.
"""
import hashlib
import math
import os
import shutil

import torch
import torch.nn as nn

from checks import die
from quant import QuantizedLinear, quantize_model, swap_linears


class LoRALinear(nn.Module):
    """A frozen layer plus a trainable low-rank update: y = base(x) + (alpha / rank) * x A^T B^T.
    A (rank, in) starts random and B (out, rank) at zero: at step 0 the model is exactly the base."""

    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)  # an nn.Linear, or its int8/NF4 version (QLoRA)
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale

    def merged(self):
        """An ordinary Linear with the update folded into its weight:
        sampling pays nothing extra."""
        w = self.base.weight if isinstance(self.base, nn.Linear) else self.base.dequantize()
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=w.device)
        linear.weight.data = (w + self.scale * self.lora_B @ self.lora_A).detach()
        if linear.bias is not None:
            linear.bias.data = self.base.bias.detach().clone()
        return linear


def add_lora(model, rank, alpha):
    """Freeze the whole model, then wrap each Linear in the blocks with a trainable LoRA update."""
    model.requires_grad_(False)
    swap_linears(model, lambda layer: LoRALinear(layer, rank, alpha))


def merge_lora(model):
    """Fold every LoRA update into its weight (on a quantized base too:
    the merged weight is fp32)."""
    swap_linears(model, lambda layer: layer.merged() if isinstance(layer, LoRALinear) else layer)


def sha256(path):
    """The fingerprint of a LoRA run's base checkpoint: the adapters fit that file only."""
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def base_record(path):
    """A new LoRA run's record of its base: {'path': where the run keeps it, from the run's folder
    (so the folder can be copied or moved whole), 'sha256', 'from': the file it came from}."""
    return {'path': os.path.join('base', os.path.basename(path)), 'sha256': sha256(path),
            'from': os.path.abspath(path)}


def base_path(ckpt_path, base):
    """Where a LoRA checkpoint's base is: beside it in base/ (older ones name an absolute path)."""
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), base['path'])


def keep_base(base, out_dir):
    """A new LoRA run's base, kept safe before it trains: a hard link in <out_dir>/base/ to the
    file the run starts from (a copy where a link can't be made), and with GPT-2 the other files
    of its folder. Checkpoints are replaced by renames, so a later run that rewrites the original
    leaves the linked file whole. A kept base of other bytes that a checkpoint in out_dir names is
    never replaced: the run is refused."""
    kept = os.path.join(out_dir, base['path'])
    if os.path.isfile(kept) and sha256(kept) == base['sha256']:
        return
    named = [n for n in ('ckpt.pt', 'best.pt') if os.path.isfile(os.path.join(out_dir, n))]
    if os.path.isfile(kept) and named:
        die(f"{out_dir} holds a LoRA run whose {named[0]} needs its kept base, {kept}, and this run "
            f"starts from another: give another --out_dir")
    names = [os.path.basename(kept)]
    if kept.endswith('.safetensors'):  # GPT-2: its config and tokenizer come from the same folder
        names = ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt']
    for name in names:
        source = os.path.join(os.path.dirname(base['from']), name)
        target = os.path.join(out_dir, 'base', name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target + '.tmp'):
            os.remove(target + '.tmp')
        try:
            os.link(source, target + '.tmp')
        except OSError:  # another file system, or one without links
            shutil.copyfile(source, target + '.tmp')
        os.replace(target + '.tmp', target)
    if sha256(kept) != base['sha256']:
        die(f"{base['from']} changed while this run started; run it again")


def base_problem(path, base):
    """Why a LoRA checkpoint's base (at path; its record {'path', 'sha256'}) can't be used, or
    '' when it is the very file."""
    if not os.path.isfile(path):
        return f"is missing; put it back (it was {base.get('from', 'the file it names')})"
    if sha256(path) != base['sha256']:
        return "has changed since (sha256 differs)"
    return ''


def adapt(model, settings, adapters=None):
    """The model as a LoRA run trains it: frozen (its base in 4 or 8 bits for QLoRA), each Linear in
    the blocks wrapped with an update, and the saved adapters loaded if there are any."""
    if settings['quantize']:
        quantize_model(model, settings['quantize'])
    add_lora(model, settings['rank'], settings['alpha'])
    if adapters is not None:
        model.load_state_dict(adapters, strict=False)
    return model


def summary(model, settings):
    """The line that says how much of the model a LoRA run trains (a 4- or
    8-bit base's weights count too)."""
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters()) + sum(m.in_features * m.out_features for m in model.modules()
                                                             if isinstance(m, QuantizedLinear))
    base = f" on a {settings['quantize']} base" if settings['quantize'] else ''
    return f"LoRA rank {settings['rank']}{base}: training {n_train:,} of {n_all:,} parameters " \
           f"({100 * n_train / n_all:.2f}%)"


def merged_weights(model, base, ckpt):
    """A LoRA checkpoint's model as plain weights: its adapters merged into its base's weights
    (model is a fresh model of their shape)."""
    model.load_state_dict(base)
    merge_lora(adapt(model, ckpt['lora'], ckpt['model']))
    return model.state_dict()
