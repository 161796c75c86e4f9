# The lecture's step: the four heads, then a feed-forward network (the lecture's is one Linear, 1x wide; ours is 4x wide
# with a second Linear back).
# python gpt.py config/lecture/ffn.py
from config.lecture.settings import *  # the lecture's settings, parts and recipe
out_dir = 'out-lecture-ffn'
n_layer = 1
n_head = 4
ffn = True
residual = False
norm = False
