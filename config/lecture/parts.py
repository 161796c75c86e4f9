# The lecture's GPT parts and training recipe, defined once ("Let's build GPT": its gpt.py). Every config
# that says "the lecture's parts" imports this file: config/lecture/settings.py (its steps), config/lecture_gpu.py
# (its scaled-up model) and config/lecture_cpu.py (its model at gpt.py's CPU size).
# Parts: learned positions, LayerNorm before attention, before the feed-forward network and before the head,
# ReLU, biases (the lecture's key, query and value Linears have none; here every Linear has one), an untied head,
# PyTorch's default init. Recipe: AdamW with PyTorch's defaults (betas 0.9 and 0.999, weight decay 0.01; the
# lecture decays every parameter, gpt.py only the matrices) at a constant rate (no warmup, no decay), no gradient
# clipping, float32.
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
relu = True
bias = True
tie_weights = False
weight_init = 'pytorch'
optimizer = 'adamw'
warmup_iters = 0
decay_lr = False  # a constant rate at any learning_rate
weight_decay = 0.01
beta2 = 0.999
grad_clip = 0.0
dtype = 'float32'  # the lecture's precision, on every machine (dtype='auto' picks bf16 on some CPUs)
