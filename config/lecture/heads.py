# The lecture's step: four heads of 8, side by side (the lecture's MultiHeadAttention).
# python gpt.py config/lecture/heads.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-heads'
n_layer = 1
n_head = 4
ffn = False
residual = False
norm = False
