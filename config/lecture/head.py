# The lecture's step: one self-attention head of 32: no feed-forward network, no residual connections, no norms.
# python gpt.py config/lecture/head.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-head'
n_layer = 1
n_head = 1
ffn = False
residual = False
norm = False
