"""
How a gpt.py run takes a model from a file: a checkpoint (its own run's, to resume, or another's, to
start from), or GPT-2 as one (gpt2.py); a LoRA checkpoint's base; the settings a checkpoint brings
(its architecture, refused where a knob asks otherwise); and the randomness a resumed run goes on
with. Above checkpoint.py (the files) and the next steps; gpt.py and the tools import it. It never
imports gpt: the model's class comes in as an argument.
"""
import os
from dataclasses import asdict

from checkpoint import load_checkpoint
from checks import die, will_train


def read_model(name, root, tok=None, dataset=None, block_size=None):
    """A checkpoint (a ckpt.pt's path, from root), or GPT-2 as one (gpt2.py: a hub name, a
    Hugging Face folder or its model.safetensors; block_size crops its 1,024 positions), checked
    against the dataset's tokenizer; and the file it came from."""
    path = os.path.join(root, name)
    if os.path.isfile(path) and not path.endswith('.safetensors'):
        return load_checkpoint(path, 'gpt', tok, dataset), path
    if os.path.isfile(os.path.join(path, 'ckpt.pt')):
        die(f"{name} is a run's folder, not a model: give its checkpoint, --init_from={os.path.join(name, 'ckpt.pt')} "
            f"(or best.pt), or continue that run with --init_from=resume --out_dir={name}")
    from gpt2 import load_gpt2  # only for GPT-2: huggingface_hub and safetensors
    return load_gpt2(path if os.path.exists(path) else name, tok, dataset, block_size)


def full_weights(path, ckpt, tok, dataset, model_class, merge=True):
    """All of a gpt checkpoint's weights. A LoRA checkpoint holds only its adapters: its base's
    weights come from the base (a checkpoint, or GPT-2), once checked to be the very file they
    trained on, with the adapters merged into a model_class (merge=False: the base's alone, for a
    LoRA run to resume)."""
    if 'lora' not in ckpt:
        return ckpt['model']
    from lora import base_path, base_problem, merged_weights
    base = base_path(path, ckpt['base'])
    problem = base_problem(base, ckpt['base'])
    if problem:
        die(f"{path} is a LoRA checkpoint on the base {base}, which {problem}")
    theirs = read_model(base, '/', tok, dataset, ckpt['model_args']['block_size'])[0]
    weights = full_weights(base, theirs, tok, dataset, model_class)
    if not merge:
        return weights
    return merged_weights(model_class(model_class.config_class(**ckpt['model_args'])), weights, ckpt)


def resume(state, k, configured, data, model_class, log=print):
    """init_from='resume': <out_dir>/ckpt.pt's step, time, best and LoRA settings into state
    (gpt.py's State); the weights (a LoRA run's: its base's; the adapters load once the model is
    adapted). k: the knobs; configured: the names a config file or the command line set."""
    ckpt = state.ckpt = load_checkpoint(state.ckpt_path, 'gpt', data.tok, k.dataset)
    state.iter_num = ckpt['iter_num']
    state.best_iter = ckpt.get('best_iter', 0)
    if 'best_iter' in ckpt:  # checkpoints from before best.pt have none
        state.best_val_loss = ckpt['best_val_loss']
    state.last_save = f"{state.ckpt_path} keeps step {state.iter_num}"
    state.train_time = ckpt.get('train_time', 0.0)
    state.lora = ckpt.get('lora')
    state.roads = ckpt.get('roads')  # its precisions (roads.py); none in older checkpoints
    state.base = ckpt.get('base')
    if k.lora_rank and not state.lora:
        die(f"{state.ckpt_path} is not a LoRA run, so it cannot resume with lora_rank > 0; to add LoRA, "
            f"fine-tune it: --init_from={os.path.join(k.out_dir, 'ckpt.pt')} --out_dir=ANOTHER")
    if will_train(k) and state.iter_num >= k.max_iters:
        log(f"note: {state.ckpt_path} is at step {state.iter_num}, at or past max_iters={k.max_iters}: "
            f"nothing to train (a higher --max_iters trains on); its best model is evaluated again")
    keep_model_settings(state, ckpt, k, configured, model_class)
    if state.lora:  # a QLoRA model samples on its own 4-bit base, never another
        lora_settings = {'lora_rank': state.lora['rank'], 'lora_alpha': state.lora['alpha']}
        if state.lora['quantize']:
            lora_settings['quantize'] = state.lora['quantize']
        refuse_other_settings(state, lora_settings, k, configured)
    return full_weights(state.ckpt_path, ckpt, data.tok, k.dataset, model_class, merge=False)


def start_from(state, k, configured, data, model_class, root):
    """init_from=PATH: a checkpoint's (or GPT-2's) architecture and weights, from step 0. A new
    LoRA run records its base (lora.py); it keeps its own link to it only once it trains. A run
    that only evaluates or samples takes the checkpoint's precisions too."""
    limit = None
    if 'block_size' in configured:
        limit = k.block_size  # crops GPT-2's 1,024 positions
    ckpt, path = read_model(k.init_from, root, data.tok, k.dataset, limit)
    if k.lora_rank:
        from lora import base_record
        state.lora = {'rank': k.lora_rank, 'alpha': k.lora_alpha, 'quantize': k.quantize}
        state.base = base_record(path)
    if not will_train(k):
        state.roads = ckpt.get('roads')
    state.made = {'config': ckpt.get('config', {}), 'iter_num': ckpt.get('iter_num', 0)}
    keep_model_settings(state, ckpt, k, configured, model_class)
    return full_weights(path, ckpt, data.tok, k.dataset, model_class)


def keep_model_settings(state, ckpt, k, configured, model_class):
    """A loaded model keeps its architecture (dropout is the run's) and its template. Its
    model_args become its model's config's whole set of fields (model_class.config_class: the
    fields an older checkpoint, or GPT-2's config, leaves out take their defaults)."""
    config = model_class.config_class(**{**ckpt['model_args'], 'dropout': k.dropout})
    state.model_args = asdict(config)
    state.template = state.template or ckpt.get('template', {})
    architecture = {}
    for name, value in state.model_args.items():
        if name in state.config and name != 'dropout':
            architecture[name] = value
    refuse_other_settings(state, architecture, k, configured)


def refuse_other_settings(state, from_checkpoint, k, configured):
    """A knob set to another value than the checkpoint's is refused, never ignored; the saved
    config says what was used."""
    for name, value in from_checkpoint.items():
        if name in configured and getattr(k, name) != value:
            die(f"--{name}={getattr(k, name)!r}, but the model of {k.init_from} has {name}={value!r}; it comes "
                f"with the checkpoint: leave --{name} out")
    state.config |= from_checkpoint


def restore_randomness(run, state):
    """On resume, the data order and this process's dropout stream go on where they stopped:
    after the model is built, whose init draws from the same generator."""
    import torch
    ckpt = state.ckpt
    if ckpt is None:
        return
    state.data_rng.set_state(ckpt['rng']['data'])
    if run.rank < len(ckpt['rng']['torch']):  # a row per process
        torch.set_rng_state(ckpt['rng']['torch'][run.rank].clone())
        if run.dev_type == 'cuda' and ckpt['rng'].get('cuda') is not None:
            torch.cuda.set_rng_state(ckpt['rng']['cuda'][run.rank].clone())
    run.log(f"resumed from {state.ckpt_path} at step {state.iter_num}")


def restore_optimizers(optimizers, state, k, master=True):
    """A resumed run's optimizers get their saved state; a new run says whose ckpt.pt it replaces."""
    ckpt = state.ckpt
    if ckpt is None:
        if master and os.path.exists(state.ckpt_path):
            print(f"note: this run will overwrite {state.ckpt_path} (to resume: --init_from=resume)")
        return
    if not ckpt['optimizer']:
        die(f"{state.ckpt_path} holds a model without an optimizer (written by --export): "
            f"fine-tune it with --init_from={os.path.join(k.out_dir, 'ckpt.pt')} --out_dir=ANOTHER")
    if len(ckpt['optimizer']) != len(optimizers):
        die(f"{state.ckpt_path} was trained with optimizer='{ckpt['config']['optimizer']}'; "
            f"resume with the same")
    for opt, saved in zip(optimizers, ckpt['optimizer']):
        opt.load_state_dict(saved)
