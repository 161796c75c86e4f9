# The lecture's step: (teaching) the layernorm step without position information: attention then sees a bag of the
# tokens before it, not their order.
# python gpt.py config/lecture/no_pos.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-no-pos'
n_layer = 3
n_head = 4
ffn = True
residual = True
norm = True
pos = False
