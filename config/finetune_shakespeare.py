# nanoGPT's config/finetune_shakespeare.py, sized for a 2-core CPU: GPT-2 (124M) adapted to Tiny Shakespeare
# with LoRA, in about 25 minutes (max_iters below). Its files come once from the Hugging Face hub (or give --init_from=FOLDER,
# a folder as save_pretrained writes it). Encode the text with GPT-2's tokenizer first:
#   python prepare.py --dataset=shakespeare_gpt2 --tokenizer_from=gpt2   # downloads it; or --input=YOUR_COPY
#   python gpt.py config/finetune_shakespeare.py
init_from = 'gpt2'
dataset = 'shakespeare_gpt2'
out_dir = 'out-shakespeare-gpt2'
lora_rank = 8  # 1.2M trainable weights beside GPT-2's frozen 124M (nanoGPT trains them all, on a GPU)
lora_alpha = 16.0
block_size = 256  # of GPT-2's 1,024 positions: a quarter of the attention work per token
batch_size = 4  # 1,024 tokens a step
gradient_accumulation_steps = 1
max_iters = 800  # about 1.6 s a step on 2 cores (README): about 25 minutes with the evals
learning_rate = 1e-3  # LoRA's updates start at zero and need a larger rate than full fine-tuning's 3e-5
min_lr = 1e-4
warmup_iters = 20
eval_interval = 100
eval_iters = 10
max_new_tokens = 200
