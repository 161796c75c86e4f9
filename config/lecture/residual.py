# The lecture's step: three blocks of attention and feed-forward, with residual connections: x + f(x).
# python gpt.py config/lecture/residual.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-residual'
n_layer = 3
n_head = 4
ffn = True
residual = True
norm = False
