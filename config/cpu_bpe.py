# The CPU default on byte-level BPE tokens (vocab 1024), from the README's equal-time ablation:
# a 64-token block covers about 2.3x more text than 64 characters, and one micro-batch of 16
# sequences a step (more, smaller steps) did best in 110 s. Make the data first:
#   python prepare.py --tokenizer=bpe          # data/shakespeare_bpe/, vocab_size 1024
#   python gpt.py config/cpu_bpe.py --max_time=110
dataset = 'shakespeare_bpe'
out_dir = 'out-bpe'
batch_size = 16
gradient_accumulation_steps = 1
warmup_iters = 30
