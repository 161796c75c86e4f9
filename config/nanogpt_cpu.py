# nanoGPT's published CPU recipe for shakespeare_char, the reference the README compares with:
# 4 layers x 128 wide, block 64, batch 12, 2000 iterations, lr 1e-3, no dropout, nanoGPT's GPT-2 parts.
#   python gpt.py config/nanogpt_cpu.py
out_dir = 'out-nanogpt-cpu'
device = 'cpu'
dtype = 'float32'  # nanoGPT's train.py runs a CPU in float32 (autocast only on GPUs)
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
gradient_accumulation_steps = 1
dropout = 0.0
max_iters = 2000
lr_decay_iters = 2000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
eval_interval = 250
eval_iters = 20
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
tie_weights = True
optimizer = 'adamw'
schedule = 'cosine'
