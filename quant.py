"""
Smaller weights for gpt.py's --quantize: int8 and NF4 (QLoRA's 4-bit type), weight-only.

The Linear layers inside the blocks are swapped for versions that store each weight as a small
integer code plus a float scale for a group of weights; embeddings, head and norms stay as they are.
gpt.py imports this only when --quantize asks for it; lora.py imports it in every LoRA run (the
Linear swap they share, and QLoRA's base). It never imports gpt.
"""
import functools
import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class QuantizedLinear(nn.Module):
    """What the two share: the Linear's shape and bias, and a matmul with the
    weight dequantized to float."""

    def __init__(self, linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias  # None, or kept as it is (the lecture's model has biases)

    def forward(self, x):
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Int8Linear(QuantizedLinear):
    """A Linear whose weight is int8 with one absmax scale per output row: w ~ code * absmax / 127.

    Weight-only: only the weights are stored small, and both of its roads compute x @ dequantize()^T
    (plus the bias), the float road with x as it is, the kernel road with x cut to 21-bit codes. The 'float' road (everywhere, and wherever gradients flow: LoRA on an int8
    base) multiplies by the codes as floats, then the scales. The 'kernel' road, for evaluating and
    sampling on a CPU whose int8 matmul sums exactly (int8_kernel_is_exact: with VNNI or AMX, and
    with AVX2 alone), reaches the same numbers by int8 matmul: each token's row of x becomes 21-bit
    integer codes with its own scale (steps of 2**-20 of the row's largest value: errors within 3x
    of fp32's own matmul, docs/profile.md), cut into three 7-bit digits, and one int8 matmul
    against the codes reads the weights once for all three. Each digit goes in as digit - 128, in
    [-128, -1]: without VNNI the kernel shifts its input by +128 and adds pairs of products in 16
    bits, which digits in [0, 127] keep under 2**15 (127 * 127 * 2 = 32258) and a full byte would
    not. roads.int8() sets `road`."""

    road = 'float'  # or 'kernel': roads.int8() chooses

    def __init__(self, linear):
        super().__init__(linear)
        w = linear.weight.detach().float().contiguous()  # (out, in), row by row
        self.register_buffer('scale', w.abs().amax(dim=1).clamp(min=1e-12) / 127)  # (out,)
        # (out, in)
        self.register_buffer('qweight', torch.round(w / self.scale[:, None]).to(torch.int8))
        # (out,): what the kernel road's digits lose, FIX times. Not a buffer (not saved, not
        # counted as weights): it is made from qweight, for the CPU's kernel road only
        self.row_sums = self.qweight.sum(dim=1, dtype=torch.int32)

    def dequantize(self):
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x):
        if self.road == 'kernel' and x.is_cpu and not torch.is_grad_enabled():
            return self.kernel_road(x)
        # the float road: the scale is per output
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def kernel_road(self, x):
        rows = x.reshape(-1, self.in_features).float()  # (N, in): a token a row
        # (N, 1): each row's largest |x|
        top = torch.linalg.vector_norm(rows, math.inf, dim=1, keepdim=True).clamp(min=1e-12)
        # in [1, 2**21): x is (code - 2**20) * top / (2**20 - 1), to half a step (+ 0.5, then int())
        codes = torch.addcmul(OFFSET, rows, STEPS / top).int().view(1, -1)  # (1, N * in)
        # (3, N * in): the digits lo, mid, hi (code = hi * 2**14 + mid * 2**7 + lo), each as
        # digit - 128 (| -128 sets every bit above the digit's 7)
        pieces = ((codes >> SHIFTS) | MINUS_128).to(torch.int8)
        # (3N, out), exact int32
        sums = torch._int_mm(pieces.view(-1, self.in_features), self.qweight.t())
        # (3, N, out): the 128s the digits lost, less the 2**20 the codes gained
        sums = torch.addcmul(sums.view(3, -1, self.out_features), FIX, self.row_sums)
        # (N, out): each digit's sums at its place
        y = torch.mm(PLACES, sums.view(3, -1).float()).view(-1, self.out_features) * top
        y = y * self.scale if self.bias is None else torch.addcmul(self.bias, y, self.scale)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


SHIFTS = torch.tensor([0, 7, 14], dtype=torch.int32).view(3, 1)  # where each digit of a code starts
# constants as tensors: a Python number would be made a tensor at every call
STEPS = torch.tensor(2**20 - 1.0)  # a row's largest |x| is this many steps
OFFSET = torch.tensor(2**20 + 0.5)  # codes from 1 up, rounded
MINUS_128 = torch.tensor(-128, dtype=torch.int32)
# sum of (digit - 128) * 128**k is code - 128 * (1 + 2**7 + 2**14) = x's code - 1065088,
# and 1065088 = 1 * 2**7 + 65 * 2**14: each output gets its weights' sum back, once
# in mid's sums and 65 times in hi's
FIX = torch.tensor([0, 1, 65], dtype=torch.int32).view(3, 1, 1)
# (1, 3): what each digit's sums are worth, in steps of top / (2**20 - 1)
PLACES = torch.tensor([[1.0, 2.0**7, 2.0**14]]) / (2**20 - 1)


@functools.cache
def int8_kernel_is_exact():
    """Does torch._int_mm (oneDNN) sum Int8Linear's pieces exactly on this CPU? With VNNI (AVX512-VNNI,
    AVX-VNNI, AMX) it sums any int8 exactly. Without (AVX2, AVX-512 before VNNI) it adds pairs of
    products in 16 bits after shifting the inputs by +128: pieces in [-128, -1] stay exact there, any
    wider input overflows. Asked of the kernel itself, on the largest products, for one row and for
    many; where it says no (or has no CPU kernel), Int8Linear takes its float road."""
    g = torch.Generator().manual_seed(0)
    b = (torch.randint(0, 2, (48, 256), generator=g) * 254 - 127).to(torch.int8)  # +-127
    for n in (1, 40):
        a = torch.where(torch.rand(n, 256, generator=g) < 0.5, -128, -1).to(torch.int8)
        try:
            if not torch.equal(torch._int_mm(a, b.t()).long(), a.long() @ b.long().t()):
                return False
        except RuntimeError:  # a torch without the CPU kernel
            return False
    return True


def nf4_code():
    """NF4, QLoRA's 4-bit data type: 16 values at quantiles of a standard normal, scaled to [-1, 1],
    with an exact 0. Normally distributed weights then use all 16 codes about equally often. The
    quantiles are taken at probabilities evenly spaced from 0.5 to offset (not 1, whose quantile is
    infinite): 8 on the positive side and 7 on the negative, so that 0 is one of the 16."""
    # 0.9677: between the last points of 15 and 16 bins
    offset = 1 - (1 / (2 * 15) + 1 / (2 * 16)) / 2
    # 8 values
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    # 7 values
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    code = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (code / code.abs().max()).float()


class NF4Linear(QuantizedLinear):
    """A Linear whose weight is NF4: blocks of 64 weights, each block scaled by its absmax
    into [-1, 1] and rounded to the nearest of the 16 NF4 values; two 4-bit codes are
    packed into each byte. It dequantizes to float for every matmul: it saves memory, not
    time (this is the readable version)."""
    block = 64

    def __init__(self, linear):
        super().__init__(linear)
        w = linear.weight.detach().float().contiguous()  # (out, in), row by row
        # (n_blocks, 64)
        flat = F.pad(w.flatten(), (0, -w.numel() % self.block)).view(-1, self.block)
        self.register_buffer('absmax', flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12))
        self.register_buffer('code', nf4_code())
        # the nearest value
        codes = torch.bucketize(flat / self.absmax, (self.code[1:] + self.code[:-1]) / 2)
        # (n_blocks, 32)
        self.register_buffer('packed', (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8))

    def dequantize(self):
        # (n_blocks, 64)
        codes = torch.stack((self.packed >> 4, self.packed & 15), dim=-1).flatten(1).long()
        w = (self.code[codes] * self.absmax).flatten()[:self.in_features * self.out_features]
        return w.view(self.out_features, self.in_features)


def swap_linears(model, make):
    """Replace each Linear layer in the blocks (c_attn, c_proj, c_fc) by make(layer)."""
    for module in list(model.blocks.modules()):
        for name, child in list(module.named_children()):
            if name in ('c_attn', 'c_proj', 'c_fc'):
                setattr(module, name, make(child))


def quantize_model(model, kind):
    """Swap the blocks' Linears for their int8 or NF4 versions; return a
    line that says how much smaller."""
    fp32 = weight_bytes(model)
    swap_linears(model, {'int8': Int8Linear, 'nf4': NF4Linear}[kind])
    q = weight_bytes(model)
    return (f"quantized the blocks' Linear weights to {kind}: {fp32 / 2**20:.2f} MiB -> {q / 2**20:.2f} MiB "
            f"({fp32 / q:.1f}x smaller)")


def weight_bytes(model):
    """Bytes of the blocks' Linear weights (and biases, if any) as stored:
    fp32, or codes plus scales."""
    return sum(b.numel() * b.element_size() for m in model.blocks.modules() for n, b in
               [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
               if isinstance(m, (nn.Linear, QuantizedLinear)) and n != 'code')
