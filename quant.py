"""
Smaller weights for gpt.py's --quantize: int8 and NF4 (QLoRA's 4-bit type), weight-only.

The Linear layers inside the blocks are swapped for versions that store each weight as a small integer
code plus a float scale for a group of weights; embeddings, head and norms stay as they are.
gpt.py imports this only when --quantize (or a QLoRA run) asks for it. It never imports gpt.
"""
import warnings

import torch
import torch.nn as nn
from torch.nn import functional as F


class QuantizedLinear(nn.Module):
    """What the two share: the Linear's shape and bias, and a matmul with the weight dequantized to float."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias  # None, or kept as it is (the lecture's model has biases)

    def forward(self, x):
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8Linear(QuantizedLinear):
    """A Linear whose weight is int8 with one absmax scale per output row: w ~ code * absmax / 127."""

    def __init__(self, linear):
        super().__init__(linear)
        w = linear.weight.detach().float()
        self.register_buffer('scale', w.abs().amax(dim=1).clamp(min=1e-12) / 127)  # (out,)
        self.register_buffer('qweight', torch.round(w / self.scale[:, None]).to(torch.int8))  # (out, in)
        self.packed = None  # fbgemm's prepacked copy, made on first use on a CPU

    def dequantize(self):
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x):
        if x.device.type == 'cpu' and not torch.is_grad_enabled() and torch.backends.quantized.engine == 'fbgemm':
            # Speed: on a CPU, sampling is bound by reading weights, and fp32 reads 4 bytes a weight.
            # fbgemm's int8 matmul reads 1 (it also rounds each row of x to 8 bits on the fly); it ran
            # a 6x384 model's token step 6x faster than fp32 here, while dequantize-then-matmul and
            # torch._weight_int8pack_mm were slower than fp32. So: fbgemm to evaluate and sample, and the
            # exact dequantized weight wherever gradients flow (LoRA training on an int8 base).
            if self.packed is None:  # the same int8 codes and scales, in fbgemm's layout
                with warnings.catch_warnings():  # torch calls its quantized tensors deprecated; the kernel stays
                    warnings.simplefilter('ignore')
                    q = torch.quantize_per_channel(self.dequantize(), self.scale.double(),
                                                   torch.zeros_like(self.scale, dtype=torch.long), 0, torch.qint8)
                self.packed = torch.ops.quantized.linear_prepack(q, None if self.bias is None else self.bias.detach())
            return torch.ops.quantized.linear_dynamic(x.float(), self.packed).to(x.dtype)
        return super().forward(x)


def nf4_code():
    """NF4, QLoRA's 4-bit data type: 16 values at quantiles of a standard normal, scaled to [-1, 1], with
    an exact 0. Normally distributed weights then use all 16 codes about equally often. The quantiles are
    taken at probabilities evenly spaced from 0.5 to offset (not 1, whose quantile is infinite): 8 on the
    positive side and 7 on the negative, so that 0 is one of the 16."""
    offset = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2  # 0.9677: between the last points of 15 and 16 bins
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    code = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (code / code.abs().max()).float()


class NF4Linear(QuantizedLinear):
    """A Linear whose weight is NF4: blocks of 64 weights, each block scaled by its absmax into [-1, 1]
    and rounded to the nearest of the 16 NF4 values; two 4-bit codes are packed into each byte.
    It dequantizes to float for every matmul: it saves memory, not time (this is the readable version)."""
    block = 64

    def __init__(self, linear):
        super().__init__(linear)
        w = linear.weight.detach().float()
        flat = F.pad(w.flatten(), (0, -w.numel() % self.block)).view(-1, self.block)  # (n_blocks, 64)
        self.register_buffer('absmax', flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12))
        self.register_buffer('code', nf4_code())
        codes = torch.bucketize(flat / self.absmax, (self.code[1:] + self.code[:-1]) / 2)  # the nearest value
        self.register_buffer('packed', (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8))  # (n_blocks, 32)

    def dequantize(self):
        codes = torch.stack((self.packed >> 4, self.packed & 15), dim=-1).flatten(1).long()  # (n_blocks, 64)
        w = (self.code[codes] * self.absmax).flatten()[:self.in_features * self.out_features]
        return w.view(self.out_features, self.in_features)


def swap_linears(model, make):
    """Replace each Linear layer in the blocks (c_attn, c_proj, c_fc) by make(layer)."""
    for module in list(model.blocks.modules()):
        for name, child in list(module.named_children()):
            if name in ('c_attn', 'c_proj', 'c_fc'):
                setattr(module, name, make(child))


def quantize_model(model, kind):
    """Swap the blocks' Linears for their int8 or NF4 versions; return a line that says how much smaller."""
    if kind == 'int8' and 'fbgemm' in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = 'fbgemm'  # on x86 the default engine runs this matmul 2-4x slower
    fp32 = weight_bytes(model)
    swap_linears(model, {'int8': Int8Linear, 'nf4': NF4Linear}[kind])
    q = weight_bytes(model)
    return (f"quantized the blocks' Linear weights to {kind}: {fp32 / 2**20:.2f} MiB -> {q / 2**20:.2f} MiB "
            f"({fp32 / q:.1f}x smaller)")


def weight_bytes(model):
    """Bytes of the blocks' Linear weights (and biases, if any) as stored: fp32, or codes plus scales."""
    return sum(b.numel() * b.element_size() for m in model.blocks.modules() for n, b in
               [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
               if isinstance(m, (nn.Linear, QuantizedLinear)) and n != 'code')
