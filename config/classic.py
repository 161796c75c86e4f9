# nanoGPT's GPT-2 parts at gpt.py's default size: learned positions, LayerNorm, GELU, no biases, a tied
# head, nanoGPT's init (N(0, 0.02), the residual projections scaled down by depth), AdamW with warmup and
# cosine decay. (The lecture's parts differ: config/lecture/parts.py.) Stack it with other configs or flags:
#   python gpt.py config/classic.py
#   python gpt.py config/classic.py config/gpu.py
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
relu = False
bias = False
tie_weights = True
weight_init = 'nanogpt'
optimizer = 'adamw'
schedule = 'cosine'
