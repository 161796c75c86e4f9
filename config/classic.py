# The lecture's GPT parts at gpt.py's default size: learned positions, LayerNorm, GELU, tied
# head, AdamW with cosine decay. Stack it with other configs or flags:
#   python gpt.py config/classic.py
#   python gpt.py config/classic.py config/lecture_gpu.py
rope = False
rmsnorm = False
qk_norm = False
relu2 = False
tie_weights = True
optimizer = 'adamw'
schedule = 'cosine'
