# The lecture's GPT at gpt.py's CPU size: the lecture's parts and recipe (config/lecture/parts.py) with gpt.py's
# default sizes and steps (4 layers, 4 heads, 128 wide, block 64, 2000 steps of 3 x 8 sequences), AdamW at the
# lecture's constant 1e-3. Beside `python gpt.py` (the modern parts) it shows what those parts buy, at equal
# steps, or at equal time with --max_time=S --max_iters=1000000 on both.
#   python gpt.py config/lecture_cpu.py
from config.lecture.parts import *  # the lecture's parts and recipe
out_dir = 'out-lecture-cpu'
learning_rate = 1e-3
