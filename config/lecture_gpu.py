# The lecture's GPT (Karpathy, "Let's build GPT"): 6 layers, 6 heads, 384 wide, block 256,
# batch 64, dropout 0.2, AdamW at 3e-4, 5000 iterations, with the classic parts (learned positions,
# LayerNorm, GELU, tied head). About 10.7M parameters; meant for a GPU.
#   python gpt.py config/lecture_gpu.py
# config/gpu.py is the same size with gpt.py's newer parts.
out_dir = 'out-lecture'
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
batch_size = 64
gradient_accumulation_steps = 1
dropout = 0.2
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 100
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 100
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
tie_weights = True
optimizer = 'adamw'
schedule = 'cosine'
