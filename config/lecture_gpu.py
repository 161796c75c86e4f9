# The lecture's GPT (Karpathy, "Let's build GPT"): 6 layers, 6 heads, 384 wide, block 256,
# batch 64, dropout 0.2, lr 3e-4, 5000 iterations. About 10.7M parameters; meant for a GPU.
#   python gpt.py config/lecture_gpu.py
out_dir = 'out-lecture'
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
batch_size = 64
dropout = 0.2
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 100
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 100
