# The lecture's settings for its steps in this folder, with its parts (parts.py): each step file imports
# this, then switches the parts that its step has. Run a step, not this file: python gpt.py config/lecture/head.py
# Batch 32, block 8, 32 wide, AdamW at a constant 1e-3 for 5000 steps, the loss estimated every 500 steps
# over 200 batches, no dropout. One difference stays: every attention here ends in an output projection
# (c_proj), the lecture's first steps have none.
from config.lecture.parts import *  # the lecture's parts and recipe
batch_size = 32
gradient_accumulation_steps = 1
block_size = 8
n_embd = 32
dropout = 0.0
learning_rate = 1e-3
max_iters = 5000
eval_interval = 500
eval_iters = 200
log_interval = 500
