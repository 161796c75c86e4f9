# The lecture's settings, shared by its steps in this folder: each step file imports them, then switches
# the parts that its step has. Run a step, not this file: python gpt.py config/lecture/head.py
# Batch 32, block 8, 32 wide, AdamW at a constant 1e-3 for 5000 steps (PyTorch's default weight decay 0.01
# and betas; the lecture decays every parameter, this AdamW the matrices only), the loss estimated every
# 500 steps over 200 batches, no dropout.
batch_size = 32
gradient_accumulation_steps = 1
block_size = 8
n_embd = 32
dropout = 0.0
dtype = 'float32'  # the lecture's precision, on every machine (dtype='auto' picks bf16 on some CPUs)
optimizer = 'adamw'
learning_rate = 1e-3
min_lr = 1e-3  # = learning_rate: no decay
warmup_iters = 0
weight_decay = 0.01
beta2 = 0.999
grad_clip = 0.0
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 500
# the lecture's parts: learned positions, LayerNorm, ReLU, biases, an untied head, PyTorch's default init.
# One difference stays: every attention here ends in an output projection (c_proj), the lecture's first
# steps have none
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
relu = True
bias = True
tie_weights = False
weight_init = 'pytorch'
