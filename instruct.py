"""
Instruction pairs for gpt.py: a dataset that prepare.py --format=pairs (or
--format=tasks) made, where each pair is rendered as prompt + sep + response + end, and a
loss mask is 1 on the response and its end.

PairSplit stands in for gpt.py's Split: the same ids, plus the mask, and windows that start at a
pair. get_batch and full_val_loss in gpt.py turn masked targets into -1, which the loss ignores:
only the responses are learned and scored. exact_match is the measure that says whether the model
does what a prompt asks. gpt.py imports this only when a dataset has pairs. It never imports gpt.
"""
import numpy as np
import torch


class PairSplit:
    """One split's token ids and loss mask (both memory-mapped): mask[j] is 1 where token j is part
    of a response (or its end marker), so only those tokens are ever predicted and scored."""

    def __init__(self, ids, mask):
        self.ids, self.mask = ids, mask
        m = np.asarray(mask)  # a pair starts where a response ended (mask 1 -> 0), and at 0
        self.starts = np.concatenate([[0], np.flatnonzero((m[:-1] == 1) & (m[1:] == 0)) + 1])
        self.ends = np.append(self.starts[1:], len(ids)) - 1  # each pair's last token

    def eval_windows(self, block_size):
        """The whole-split loss's windows: each pair cut into consecutive windows from
        its start, so that every response token is scored once, seeing as much of its
        own pair as the window holds before it."""
        starts = [np.arange(s, e, block_size) for s, e in zip(self.starts, self.ends)]
        last = [np.minimum(w + block_size, e) for w, e in zip(starts, self.ends)]
        return np.concatenate(starts), np.concatenate(last)

    def random_starts(self, shape, block_size, generator):
        """Where training and eval windows start: at a pair's start, so that a window
        begins with the prompt; a pair longer than a window starts later, so that the
        window still ends with the whole response."""
        starts = np.maximum(self.starts, self.ends - block_size)
        starts = torch.from_numpy(starts[starts + block_size < len(self.ids)])
        return starts[torch.randint(len(starts), shape, generator=generator)]


@torch.no_grad()
def exact_match(generate, model, split, tok, end, tasks, device, ctx, kv_cache=True):
    """Answer every held-out pair greedily (generate: gpt.py's) and compare with its response,
    exactly: the share right per task."""
    ids, mask, bounds = np.asarray(split.ids), np.asarray(split.mask), [*split.starts, len(split.ids)]
    pairs = []  # (prompt ids, the response's length in tokens, the response's text)
    for s, e in zip(bounds, bounds[1:]):
        r = s + int(np.argmax(mask[s:e]))  # the response's first token
        pairs.append((ids[s:r].tolist(), e - r, tok.decode(ids[r:e].tolist()).removesuffix(end)))
    right = [False] * len(pairs)
    by_length = {}  # prompts of one length sample as one batch
    for i, (p, _, _) in enumerate(pairs):
        by_length.setdefault(len(p), []).append(i)
    for group in by_length.values():
        for b in range(0, len(group), 256):
            chunk = group[b:b + 256]
            idx = torch.tensor([pairs[i][0] for i in chunk], dtype=torch.long, device=device)
            with ctx:
                out = generate(model, idx, max(pairs[i][1] for i in chunk) + 1, temperature=0, kv_cache=kv_cache,
                               stop=lambda new: end in tok.decode(new))
            for i, row in zip(chunk, out[:, idx.size(1):].tolist()):
                text = tok.decode(row)
                right[i] = end in text and text[:text.index(end)] == pairs[i][2]
    score = {}
    if tasks and len(tasks) == len(pairs):  # per task, for the tasks demo
        for task in dict.fromkeys(tasks):
            score[task] = 100 * np.mean([r for r, t in zip(right, tasks) if t == task])
    return {**score, 'all': 100 * np.mean(right)}
