# nanoGPT's GPU quality on a 2-core CPU: the default model (the modern parts) on BPE tokens, config/cpu_bpe.py,
# with dropout 0.1, for 3800 steps. nanoGPT's best GPU result on Tiny Shakespeare is 1.4697 nats per character,
# 2.120 bits per byte; the README gives what this config reached, its time and the anchor's beside it.
# Make the data first:
#   python prepare.py --tokenizer=bpe          # data/shakespeare_bpe/, vocab_size 1024
#   python gpt.py config/speedrun_cpu.py
from config.cpu_bpe import *  # BPE tokens, batch 16, one micro-batch a step, 30 warmup steps
out_dir = 'out-speedrun'
dropout = 0.1  # without it the model overfits Tiny Shakespeare after about 2,500 steps (docs/results.md)
max_iters = 3800  # 342 to 399 s on 2026-12-05, 3.8x to 5.2x config/nanogpt_cpu.py's time (README)
