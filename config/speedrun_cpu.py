# nanoGPT's GPU quality on a 2-core CPU: the default model on 2048-token BPE (the tokens experiment's
# best at equal time), 32 sequences of 64 tokens a step, dropout 0.1 (the dropout experiment's best),
# 1,500 steps. nanoGPT's best GPU result on Tiny Shakespeare is 1.4697 nats per character, 2.120 bits
# per byte; the README gives what this config reached, its time and the anchor's beside it.
# Make the data first:
#   python prepare.py --tokenizer=bpe --vocab_size=2048 --dataset=bpe2048
#   python gpt.py config/speedrun_cpu.py
from config.cpu_bpe import *  # the default model on BPE tokens, one micro-batch a step, 30 warmup steps
dataset = 'bpe2048'
out_dir = 'out-speedrun'
batch_size = 32  # 2,048 tokens a step
dropout = 0.1  # without it the model overfits 2048-token BPE after about 1,000 steps (docs/experiments.md)
max_iters = 1500
eval_interval = 500  # each estimate takes about 2 s at this batch: three, and the last step's
