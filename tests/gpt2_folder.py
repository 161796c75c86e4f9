"""
A GPT-2 folder as save_pretrained writes it (config.json, model.safetensors, vocab.json, merges.txt), with
random weights, made by the reference libraries, transformers and tokenizers (test-only dependencies). The
tests use small ones; without a network it also stands in for GPT-2 itself, at its real shape:

    python tests/gpt2_folder.py --out=gpt2-shaped --input=../shared/data/tinyshakespeare/input.txt   # 124M
"""
import argparse
import json
import os


def make(folder, text, vocab_size=512, n_layer=12, n_head=12, n_embd=768, n_positions=1024, model_vocab=None):
    """A byte-level BPE trained on text (up to vocab_size tokens, <|endoftext|> among them) and a GPT-2 of
    these sizes with random weights (seed 0), whose vocabulary is model_vocab (default: the tokenizer's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=['<|endoftext|>'], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    os.makedirs(folder, exist_ok=True)
    tk.model.save(str(folder))  # vocab.json and merges.txt
    if model_vocab and model_vocab > tk.get_vocab_size():  # number every id the model has: unused tokens
        with open(os.path.join(folder, 'vocab.json'), encoding='utf-8') as f:
            vocab = json.load(f)
        vocab |= {f'<|unused{i}|>': i for i in range(len(vocab), model_vocab)}
        with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
            json.dump(vocab, f, ensure_ascii=False)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=model_vocab or tk.get_vocab_size(), n_positions=n_positions,
                                     n_embd=n_embd, n_layer=n_layer, n_head=n_head, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return tk


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description="a random GPT-2-shaped folder (default: GPT-2 124M's shape)")
    parser.add_argument('--out', required=True)
    parser.add_argument('--input', required=True, help='UTF-8 text to train its tokenizer on')
    parser.add_argument('--vocab_size', type=int, default=50257, help="the tokenizer's; a small text stops sooner")
    args = parser.parse_args()
    with open(args.input, encoding='utf-8') as f:
        tk = make(args.out, f.read(), args.vocab_size, model_vocab=50257)
    print(f"wrote {args.out}: GPT-2 124M's shape, random weights; a tokenizer of {tk.get_vocab_size():,} tokens")
