# The lecture's scaled-up GPT ("Let's build GPT", its final gpt.py), with the lecture's parts and recipe
# (config/lecture/parts.py): 6 layers, 6 heads, 384 wide, block 256, batch 64, dropout 0.2, AdamW at a
# constant 3e-4 for 5000 iterations, the loss estimated every 500 over 200 batches. About 10.8M parameters;
# meant for a GPU. The lecture reports 1.48 val loss.
#   python gpt.py config/lecture_gpu.py
# config/gpu.py is the same size with gpt.py's modern parts.
from config.lecture.parts import *  # the lecture's parts and recipe
out_dir = 'out-lecture'
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
batch_size = 64
gradient_accumulation_steps = 1
dropout = 0.2
learning_rate = 3e-4
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 100
