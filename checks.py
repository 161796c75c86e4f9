"""
The settings of gpt.py that cannot work, each with the one line that says so: gpt.py's main()
refuses them before anything is built or written. Kept apart so that gpt.py reads as the
model and its run. And die(), the one way every script here refuses: one line on stderr, exit
1, no traceback. It never imports gpt.
"""
import os
import sys


def die(msg):
    """Stop with one line, 'error: <msg>', on stderr and exit status 1."""
    sys.exit(f"error: {msg}")


def problems(k, root, configured=()):
    """The messages for the knobs k (a namespace of gpt.py's knobs; root: gpt.py's folder;
    configured: the names that a config file or the command line set) that cannot work: values out
    of range, then settings that don't fit together."""
    return value_problems(k, root) + combination_problems(k, root, configured)


def value_problems(k, root):
    """Knobs whose own value can't work: sizes, amounts, rates, sampling, named choices."""
    choices = {'dtype': ('auto', 'float32', 'bfloat16', 'float16'),
               'optimizer': ('adamw', 'muon'),
               'schedule': ('cosine', 'wsd'),
               'weight_init': ('nanogpt', 'pytorch'),
               'quantize': ('', 'int8', 'nf4'),
               'newton_schulz': ('auto', 'float32', 'bfloat16'),
               'int8_road': ('auto', 'float', 'kernel'),
               'export': ('', 'false', 'true', 'hf', 'gguf')}
    named = k.init_from in ('scratch', 'resume')
    sizes = (k.n_layer, k.n_head, k.n_embd, k.block_size, k.batch_size,
             k.gradient_accumulation_steps,
             k.eval_interval, k.eval_iters, k.log_interval, k.num_samples)
    amounts = (k.max_iters, k.max_time, k.max_new_tokens, k.warmup_iters, k.lr_decay_iters, k.grad_clip,
               k.weight_decay)
    checks = [
        (named or k.init_from.startswith('gpt2') or os.path.exists(os.path.join(root, k.init_from)),
         f"init_from must be 'scratch', 'resume', a checkpoint's path, gpt2 (-medium, -large, -xl) "
         f"or a Hugging Face folder; there is no '{k.init_from}'"),
        (min(sizes) > 0,
         "n_layer, n_head, n_embd, block_size, batch_size, gradient_accumulation_steps, "
         "eval_interval, eval_iters, log_interval and num_samples must be positive"),
        (k.n_embd % max(k.n_head, 1) == 0,
         f"n_embd ({k.n_embd}) must be a multiple of n_head ({k.n_head})"),
        (min(amounts) >= 0,
         "max_iters, max_time, max_new_tokens, warmup_iters, lr_decay_iters, grad_clip and "
         "weight_decay must not be negative"),
        (0 <= k.dropout < 1, f"dropout must be in [0, 1), not {k.dropout}"),
        (0 < k.learning_rate and (not k.decay_lr or 0 <= k.min_lr <= k.learning_rate),
         "need 0 < learning_rate and 0 <= min_lr <= learning_rate "
         "(or --decay_lr=false: a constant rate)"),
        (k.temperature >= 0, f"temperature must be >= 0 (0 is greedy), not {k.temperature}"),
        (k.top_k >= 0, f"top_k must be >= 0 (0 keeps all tokens), not {k.top_k}"),
        (0 < k.top_p <= 1, f"top_p must be in (0, 1], not {k.top_p}"),
        (k.prompt != '', "prompt must not be empty (the default is a newline)"),
        (k.lora_rank >= 0, f"lora_rank must be >= 0 (0 is off), not {k.lora_rank}"),
        (k.lora_alpha > 0, f"lora_alpha must be > 0, not {k.lora_alpha}"),
        (str(k.compile).lower() in ('auto', 'true', 'false'),
         f"compile must be auto, true or false, not '{k.compile}'"),
    ]
    for name, allowed in choices.items():
        value = getattr(k, name)
        listed = ', '.join(map(repr, allowed))
        checks.append((value in allowed, f"{name} must be one of {listed}, not {value!r}"))
    return [message for ok, message in checks if not ok]


def combination_problems(k, root, configured=()):
    """Settings that don't fit together, or that would write over what a run depends on."""
    named = k.init_from in ('scratch', 'resume')
    from_path = not named and os.path.exists(os.path.join(root, k.init_from))
    writes = writes_out_dir(k) and from_path
    shaping = [name for name in ('min_lr', 'lr_decay_iters', 'schedule') if name in configured]
    out_dir = os.path.join(root, k.out_dir)
    exports_files = k.export in ('hf', 'gguf')  # a transformers folder or a GGUF file
    crowded = exports_files and os.path.isdir(out_dir) and set(os.listdir(out_dir)) - {'run.lock'}
    checks = [
        (k.decay_lr or not shaping,
         f"decay_lr=False has no decay for {', '.join(shaping)} to shape: leave one of them out"),
        (not (k.weight_init == 'pytorch' and k.tie_weights and k.init_from == 'scratch'),
         "weight_init='pytorch' with a tied head starts at a loss near 31 (the embedding's N(0, 1) "
         "init feeds the head): add --tie_weights=false, as the lecture's parts do"),
        (not (k.rope and k.pos) or k.n_embd // max(k.n_head, 1) % 2 == 0,
         "rope needs an even head size, n_embd // n_head"),
        (k.attention or not (k.rope or k.qk_norm or not k.causal),
         "rope, qk_norm and causal=False act on attention's queries, keys and mask: with attention=False add "
         "--rope=false --qk_norm=false (and leave causal out)"),
        (not (k.relu and k.relu2),
         "relu and relu2 are two choices of one activation: set one of them"),
        (not k.lora_rank or k.init_from != 'scratch',
         "lora_rank > 0 adapts a trained model: --init_from=its checkpoint"),
        (not k.eval_only or k.init_from != 'scratch',
         "eval_only needs a model: --init_from=resume or a checkpoint's path"),
        (k.int8_road == 'auto' or k.quantize == 'int8',
         f"int8_road chooses int8's matmul, and this run has quantize={k.quantize!r}: add --quantize=int8"),
        (k.newton_schulz == 'auto' or (k.optimizer == 'muon' and not k.lora_rank and will_train(k)),
         f"newton_schulz is Muon's precision, and this run trains no Muon (optimizer={k.optimizer!r}; "
         f"lora_rank={k.lora_rank}: LoRA trains with AdamW; max_iters={k.max_iters})"),
        (not (k.interactive and k.eval_only),
         "interactive answers prompts, and eval_only samples nothing: choose one"),
        (not exporting(k) or (not named and k.max_iters == 0 and not k.eval_only),
         "export writes a checkpoint's model out: --init_from=PATH --max_iters=0 --out_dir=NEW"),
        (not exporting(k) or not os.path.exists(os.path.join(root, k.out_dir, 'ckpt.pt')),
         f"{os.path.join(k.out_dir, 'ckpt.pt')} exists, and export never writes over a checkpoint: "
         f"give a new --out_dir"),
        (not crowded,
         f"--out_dir={k.out_dir} holds files, and --export={k.export} writes only into a new or "
         f"empty folder"),
        (not exports_files or not k.quantize,
         f"--export={k.export} writes the model's float32 weights: leave --quantize out"),
        (not writes or not inside(os.path.join(root, k.init_from), os.path.join(root, k.out_dir)),
         f"--init_from={k.init_from} lies in this run's --out_dir={k.out_dir}, which the run writes: "
         f"give another --out_dir, so that the model it starts from stays as it is"),
    ]
    return [message for ok, message in checks if not ok]


def will_train(k):
    """Whether a run with the knobs k trains (or resumes training): steps to take, not eval_only."""
    return k.max_iters > 0 and not k.eval_only


def exporting(k):
    """Whether a run with the knobs k writes its model out (--export: 'true', 'hf' or 'gguf')."""
    return k.export not in ('', 'false')


def writes_out_dir(k):
    """Whether a run with the knobs k writes its out_dir: it trains (or resumes), or exports."""
    return will_train(k) or exporting(k)


def inside(path, folder):
    """Whether path is folder or lies inside it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def model_problems(data, block_size, prompt, stop, interactive):
    """What a built model can't do with this data and these sampling settings."""
    found = []
    n_train, n_val = len(data.train.ids), len(data.val.ids)
    if block_size >= min(n_train, n_val):
        found.append(f"the model's block_size ({block_size}) must be shorter than both splits ({n_train:,}, "
                     f"{n_val:,} tokens)")
    if not interactive:  # --interactive checks each line it reads
        found.append(prompt_problem(data.tok, prompt, block_size))
    found.append(stop_problem(data.tok, stop))
    return [problem for problem in found if problem]


def prompt_problem(tok, text, block_size):
    """Why a model of block_size can't take text as its prompt, or ''."""
    missing = tok.unknown(text)
    if missing:
        problem = f"the prompt has characters that are not in the vocabulary: {missing}"
        # how Python keeps bytes that were not UTF-8
        if any('\ud800' <= c <= '\udfff' for c in missing):
            problem += " ('\\udcXX' is a byte that is not UTF-8: check the terminal's encoding)"
        return problem
    n = len(tok.encode(text))
    if n > block_size:
        return f"the prompt is {n} tokens, longer than the model's context ({block_size})"
    return ''


def stop_problem(tok, stop):
    """Why a sample could never end at the text stop, or ''."""
    missing = tok.unknown(stop)
    if not missing:
        return ''
    problem = (f"--stop={stop!r} has characters that are not in the vocabulary, "
               f"so no sample could end there: {missing}")
    if '\\' in stop:
        problem += " (a backslash and an n are two characters: for a newline, in bash, --stop=$'\\n')"
    return problem
