# A GPU run: the lecture's size (6 layers, 6 heads, 384 wide, block 256, ~10.7M parameters) with gpt.py's
# modern parts, its defaults (Muon, WSD, RoPE, RMSNorm, QK-norm; config/lecture_gpu.py has the lecture's).
# On CUDA, gpt.py picks bf16 autocast (fp16 + GradScaler on GPUs without bf16), TF32, flash attention,
# fused AdamW and torch.compile.
#   python gpt.py config/gpu.py
#   python gpt.py config/gpu.py --max_time=30        # a 30-second budget
#   torchrun --standalone --nproc_per_node=8 gpt.py config/gpu.py
out_dir = 'out-gpu'
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
batch_size = 64
gradient_accumulation_steps = 1
dropout = 0.2
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 100
max_iters = 5000
eval_interval = 250
eval_iters = 100
log_interval = 50
