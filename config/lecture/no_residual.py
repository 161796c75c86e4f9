# The lecture's step: (teaching) the layernorm step without its residual connections: x = f(ln(x)). Three blocks
# deep, the signal and its gradient must pass through every layer.
# python gpt.py config/lecture/no_residual.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-no-residual'
n_layer = 3
n_head = 4
ffn = True
residual = False
norm = True
