"""
Muon for gpt.py's optimizer='muon' (the default): momentum, then each update of a weight matrix is
orthogonalized, so that every direction of the matrix moves at the same rate. It trains the blocks'
matrices; AdamW trains the embeddings, the head and the gains. gpt.py imports this only when the
optimizer asks for it (the lecture's optimizer='adamw' never does).
"""
import torch


@torch.profiler.record_function('Muon: Newton-Schulz')  # a range bench.py --profile reads
def newton_schulz(G, steps=5):
    """The nearest semi-orthogonal matrix to G, approximately: all
    singular values pushed towards 1."""
    # a quintic iteration tuned to converge fast (Keller Jordan's Muon)
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)  # singular values now <= 1
    if G.size(0) > G.size(1):
        X = X.T  # iterate on the wide side: X @ X.T is the smaller product
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if G.size(0) > G.size(1) else X


def for_muon(name, p):
    """Whether Muon trains the GPT's parameter p (named name): the blocks' matrices. AdamW trains
    the embeddings, the head and the norms' gains."""
    return p.dim() >= 2 and name.startswith('blocks.')


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalize the update: every direction of a weight
    matrix moves at the same rate. ns_dtype: Newton-Schulz's precision. bf16 gives the update
    within 3% of float32's (2.6-2.9%; the test holds it under 5%), and with bf16 in hardware it
    ran 1.6x faster (2-core AMD EPYC, AVX512-BF16, 2026-11-26: docs/profile.md); roads.py times
    the two."""

    def __init__(self, params, lr=0.02, momentum=0.95, ns_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group['momentum'])
                g = p.grad.lerp(buf, group['momentum'])  # Nesterov momentum
                update = newton_schulz(g.to(self.ns_dtype))
                p.add_(update.to(p.dtype), alpha=-group['lr'] * max(1.0, p.size(0) / p.size(1)) ** 0.5)
