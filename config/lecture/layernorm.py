# The lecture's step: the three blocks with pre-norm LayerNorm, x + f(ln(x)), and a LayerNorm before the head.
# python gpt.py config/lecture/layernorm.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-layernorm'
n_layer = 3
n_head = 4
ffn = True
residual = True
norm = True
