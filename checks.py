"""
The settings of gpt.py that cannot work, each with the one line that says so: gpt.py's main() refuses
them before anything is built or written. Kept apart so that gpt.py reads as the model and its run.
It never imports gpt.
"""
import os


def problems(k, root):
    """The messages for the knobs k (a namespace of gpt.py's knobs; root: gpt.py's folder) that cannot work."""
    choices = {'dtype': ('auto', 'float32', 'bfloat16', 'float16'), 'optimizer': ('adamw', 'muon'),
               'schedule': ('cosine', 'wsd'), 'weight_init': ('nanogpt', 'pytorch'), 'quantize': ('', 'int8', 'nf4')}
    checks = [
        (k.init_from in ('scratch', 'resume') or k.init_from.startswith('gpt2')
         or os.path.exists(os.path.join(root, k.init_from)),
         f"init_from must be 'scratch', 'resume', a checkpoint's path, gpt2 (-medium, -large, -xl) or a Hugging Face "
         f"folder; there is no '{k.init_from}'"),
        (min(k.n_layer, k.n_head, k.n_embd, k.block_size, k.batch_size, k.gradient_accumulation_steps,
             k.eval_interval, k.eval_iters, k.log_interval, k.num_samples) > 0,
         "n_layer, n_head, n_embd, block_size, batch_size, gradient_accumulation_steps, eval_interval, "
         "eval_iters, log_interval and num_samples must be positive"),
        (k.n_embd % max(k.n_head, 1) == 0, f"n_embd ({k.n_embd}) must be a multiple of n_head ({k.n_head})"),
        (min(k.max_iters, k.max_time, k.max_new_tokens, k.warmup_iters, k.lr_decay_iters, k.grad_clip,
             k.weight_decay) >= 0,
         "max_iters, max_time, max_new_tokens, warmup_iters, lr_decay_iters, grad_clip and weight_decay "
         "must not be negative"),
        (0 <= k.dropout < 1, f"dropout must be in [0, 1), not {k.dropout}"),
        (0 < k.learning_rate and 0 <= k.min_lr <= k.learning_rate,
         "need 0 < learning_rate and 0 <= min_lr <= learning_rate"),
        (k.temperature >= 0, f"temperature must be >= 0 (0 is greedy), not {k.temperature}"),
        (k.top_k >= 0, f"top_k must be >= 0 (0 keeps all tokens), not {k.top_k}"),
        (0 < k.top_p <= 1, f"top_p must be in (0, 1], not {k.top_p}"),
        (k.prompt != '', "prompt must not be empty (the default is a newline)"),
        *((getattr(k, name) in v, f"{name} must be one of {', '.join(map(repr, v))}, not {getattr(k, name)!r}")
          for name, v in choices.items()),
        (str(k.compile).lower() in ('auto', 'true', 'false'),
         f"compile must be auto, true or false, not '{k.compile}'"),
        (not (k.rope and k.pos) or k.n_embd // max(k.n_head, 1) % 2 == 0,
         "rope needs an even head size, n_embd // n_head"),
        (not (k.relu and k.relu2), "relu and relu2 are two choices of one activation: set one of them"),
        (k.lora_rank >= 0, f"lora_rank must be >= 0 (0 is off), not {k.lora_rank}"),
        (k.lora_alpha > 0, f"lora_alpha must be > 0, not {k.lora_alpha}"),
        (not k.lora_rank or k.init_from != 'scratch',
         "lora_rank > 0 adapts a trained model: --init_from=its checkpoint"),
        (not k.eval_only or k.init_from != 'scratch',
         "eval_only needs a model: --init_from=resume or a checkpoint's path"),
        (not (k.interactive and k.eval_only), "interactive answers prompts, and eval_only samples nothing: choose one"),
        (not k.export or (k.init_from not in ('scratch', 'resume') and k.max_iters == 0 and not k.eval_only),
         "export writes a checkpoint's model out: --init_from=PATH --max_iters=0 --out_dir=NEW"),
        (not k.export or not os.path.exists(os.path.join(root, k.out_dir, 'ckpt.pt')),
         f"{os.path.join(k.out_dir, 'ckpt.pt')} exists, and export never writes over a checkpoint: "
         f"give a new --out_dir"),
    ]
    return [message for ok, message in checks if not ok]


def prompt_problem(tok, text, block_size):
    """Why a model of block_size can't take text as its prompt, or ''."""
    missing = tok.unknown(text)
    if missing:
        not_utf8 = any('\ud800' <= c <= '\udfff' for c in missing)  # how Python keeps bytes that were not UTF-8
        return f"the prompt has characters that are not in the vocabulary: {missing}" + (
            " ('\\udcXX' is a byte that is not UTF-8: check the terminal's encoding)" if not_utf8 else '')
    n = len(tok.encode(text))
    return f"the prompt is {n} tokens, longer than the model's context ({block_size})" if n > block_size else ''
