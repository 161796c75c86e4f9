"""
Text to token ids and back. Two tokenizers with the same face:

    tok.encode(text) -> list of ids      tok.decode(ids) -> text
    tok.vocab_size                       tok.describe() -> plain JSON-able dict (saved in meta.json)

- CharTokenizer: one id per character of the training text (the lecture's tokenizer).
- BPETokenizer: byte-level byte-pair encoding (GPT-2's idea). It starts from the 256 byte values, so
  any text encodes; training merges the most frequent adjacent pair into a new token, again and
  again, inside word-like chunks cut by a regex, until the vocabulary is full. The same class reads
  GPT-2's own 50,257 tokens from its vocab.json and merges.txt (from_files).

    from tokenizer import BPETokenizer, from_description
    tok = BPETokenizer.train(text, vocab_size=1024)
    same = from_description(tok.describe())
    gpt2 = BPETokenizer.from_files('FOLDER/vocab.json', 'FOLDER/merges.txt')
"""
import functools
import json
import re
import sys
import unicodedata
from collections import Counter, defaultdict

import numpy as np

# Pre-split text into chunks so that merges never cross them: a contraction, a run of
# letters, up to three digits, a run of punctuation (each optionally led by one space), or
# whitespace. GPT-2/GPT-4's idea, written for the standard library's `re`: [^\W\d_] is "a
# letter" (\w without digits and _).
SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d{1,3}| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


def char_class(categories):
    """The characters of these Unicode categories, as ranges for a regex [...] class."""
    chars = [i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) in categories]
    starts = [c for k, c in enumerate(chars) if k == 0 or chars[k - 1] != c - 1]
    ends = [c for k, c in enumerate(chars) if k == len(chars) - 1 or chars[k + 1] != c + 1]
    ranges = []
    for a, b in zip(starts, ends):
        ranges.append(re.escape(chr(a)))
        if b > a:
            ranges.append('-' + re.escape(chr(b)))
    return ''.join(ranges)


@functools.cache
def gpt2_split():
    r"""GPT-2's own pattern, in `re`:
        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    \p{N} (numbers) is \d plus the categories Nl and No (Ⅻ, ½, ²); \p{L} (letters) is \w without
    them, \d and _; \s is Unicode's White_Space, which Python's \s exceeds by four control
    characters (\x1c-\x1f)."""
    num, ws = char_class(('Nl', 'No')), r'\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000'
    letters, numbers = rf"(?:(?![{num}])[^\W\d_])+", rf"[\d{num}]+"
    return (rf"""'s|'t|'re|'ve|'m|'ll|'d| ?{letters}| ?{numbers}| ?(?:(?![{num}])[^{ws}\w]|_)+"""
            rf"""|[{ws}]+(?![^{ws}])|[{ws}]+""")


def gpt2_bytes():
    """GPT-2's vocab.json writes each byte as a printable character: bytes that print stand for
    themselves, the others (control codes, space, ...) become chr(256), chr(257), ... in byte order.
    """
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                 *range(ord('®'), ord('ÿ') + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


class CharTokenizer:

    def __init__(self, chars):
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        # sorted, for searchsorted
        self.codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self.token_bytes = [len(c.encode('utf-8')) for c in self.chars]  # for bits per byte

    @classmethod
    def train(cls, text):
        return cls(sorted(set(text)))

    def unknown(self, text):
        """The characters of text that this vocabulary lacks, sorted."""
        return sorted(set(text) - set(self.chars))

    def encode(self, text):
        missing = self.unknown(text)
        if missing:
            raise ValueError(f"characters not in the vocabulary: {missing[:20]}"
                             + (f" and {len(missing) - 20} more" if len(missing) > 20 else ''))
        # one code point per character
        codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
        return np.searchsorted(self.codes, codes).tolist()

    def decode(self, ids):
        return ''.join(self.chars[i] for i in ids)

    def describe(self):
        return {'type': 'char', 'chars': self.chars}


def merge(ids, pair, new_id):
    """ids with every occurrence of pair, left to right, replaced by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:

    def __init__(self, merges, pattern=SPLIT, ids=None, specials=None):
        """Token i < 256 is byte i, and merges[k] joins a pair of tokens into token 256 + k. GPT-2's
        files number the same tokens otherwise: ids[i] is the number of token i there. specials maps
        a text that is one token whole (GPT-2's <|endoftext|>) to its number."""
        self.merges = [tuple(p) for p in merges]
        self.pattern, self.split = pattern, re.compile(pattern)
        self.rank = {p: k for k, p in enumerate(self.merges)}
        pieces = [bytes([b]) for b in range(256)]  # token -> the bytes it stands for
        for a, b in self.merges:
            pieces.append(pieces[a] + pieces[b])
        self.ids, self.specials = ids, dict(specials or {})
        self.number = list(ids) if ids is not None else list(range(len(pieces)))  # token -> its id
        self.vocab_size = max(self.number + list(self.specials.values())) + 1
        self.vocab = [b''] * self.vocab_size  # id -> the bytes it stands for
        for i, piece in zip(self.number, pieces):
            self.vocab[i] = piece
        for text, i in self.specials.items():
            self.vocab[i] = text.encode('utf-8')
        self.token_bytes = [len(b) for b in self.vocab]  # for bits per byte
        self.cut = None  # splits a text at its special tokens, if there are any
        if self.specials:
            self.cut = re.compile('(' + '|'.join(map(re.escape, self.specials)) + ')')
        # chunk -> ids: a text repeats its words, so each distinct chunk is encoded once
        self.cache = {}

    @classmethod
    def from_files(cls, vocab_json, merges_txt):
        """GPT-2's tokenizer as save_pretrained writes it: vocab.json maps each token, written with
        gpt2_bytes' stand-ins, to its id; merges.txt lists the merges in the order they were
        learned. ValueError if the two don't fit together."""
        with open(vocab_json, encoding='utf-8') as f:
            vocab = json.load(f)
        with open(merges_txt, encoding='utf-8') as f:
            lines = [line for line in f.read().split('\n') if line and not line.startswith('#version')]
        token = gpt2_bytes()  # a token's text -> our number for it (bytes first)
        texts, merges = sorted(token, key=token.get), []
        try:
            for line in lines:
                a, b = line.split(' ')
                merges.append((token[a], token[b]))
                token.setdefault(a + b, len(texts))  # 256 + k: our number for merge k
                texts.append(a + b)
            ids = [vocab[t] for t in texts]
        except (KeyError, ValueError) as e:
            raise ValueError(f"{merges_txt} does not fit {vocab_json} (no token {e})")
        return cls(merges, gpt2_split(), ids, {t: i for t, i in vocab.items() if t not in token})

    @classmethod
    def train(cls, text, vocab_size, verbose=False):
        """Learn vocab_size - 256 merges from text. Each distinct chunk is kept once with its count,
        and after a merge only the chunks that held the pair are recounted, not the whole text."""
        chunks = Counter(re.findall(SPLIT, text))
        words = [list(c.encode('utf-8')) for c in chunks]  # each distinct chunk as byte ids
        counts = list(chunks.values())
        pairs = Counter()  # adjacent pair -> how often it occurs in the whole text
        where = defaultdict(set)  # adjacent pair -> the words that hold it
        for w, (word, n) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pairs[pair] += n
                where[pair].add(w)
        merges = []
        while 256 + len(merges) < vocab_size and pairs:
            best = max(pairs, key=pairs.get)  # the most frequent pair (the first seen, on a tie)
            new_id = 256 + len(merges)
            merges.append(best)
            for w in where.pop(best):
                word, n = words[w], counts[w]
                for pair in zip(word, word[1:]):  # take the word's old pairs out ...
                    pairs[pair] -= n
                    if pairs[pair] == 0:
                        del pairs[pair]
                words[w] = word = merge(word, best, new_id)
                for pair in zip(word, word[1:]):  # ... and its new ones in
                    pairs[pair] += n
                    where[pair].add(w)
            if verbose and len(merges) % 256 == 0:
                print(f"bpe: {len(merges)} merges, the last makes {bytes(cls(merges).vocab[-1])!r}")
        if 256 + len(merges) < vocab_size:
            print(f"bpe: the text has no more pairs to merge; stopped early at vocab size {256 + len(merges)} "
                  f"(asked for {vocab_size})")
        return cls(merges)

    def encode_chunk(self, chunk):
        ids = list(chunk.encode('utf-8'))
        while len(ids) >= 2:  # apply the earliest-learned merge first, as training did
            pair = min(zip(ids, ids[1:]), key=lambda p: self.rank.get(p, len(self.rank)))
            if pair not in self.rank:
                break
            ids = merge(ids, pair, 256 + self.rank[pair])
        return ids

    def encode(self, text):
        out = []
        for k, part in enumerate(self.cut.split(text) if self.cut else [text]):
            if k % 2:  # the split keeps what it cut at, a special token, at the odd places
                out.append(self.specials[part])
                continue
            for chunk in self.split.findall(part):
                ids = self.cache.get(chunk)
                if ids is None:
                    ids = self.cache[chunk] = [self.number[i] for i in self.encode_chunk(chunk)]
                out.extend(ids)
        return out

    def decode(self, ids):
        # a sequence can end inside a multi-byte character: such bytes become U+FFFD, never an error
        return b''.join(self.vocab[i] for i in ids).decode('utf-8', errors='replace')

    def unknown(self, text):
        """Bytes cover every text, except lone surrogates: what Python makes
        of bytes that were not UTF-8."""
        return sorted({c for c in text if '\ud800' <= c <= '\udfff'})

    def describe(self):
        return {'type': 'bpe', 'merges': [list(p) for p in self.merges], 'pattern': self.pattern,
                **({'ids': list(self.ids), 'specials': self.specials} if self.ids is not None else {})}


def description_in(record):
    """The tokenizer's description in a meta.json or a checkpoint; older
    ones held only the char list."""
    return record['tokenizer'] if 'tokenizer' in record else {'type': 'char', 'chars': record.get('chars')}


def from_description(desc):
    """A tokenizer from describe()'s dict (as meta.json and checkpoints hold
    it); ValueError if malformed."""
    kind = desc.get('type') if isinstance(desc, dict) else None
    if kind == 'char':
        chars = desc.get('chars')
        if not (isinstance(chars, list) and chars and all(isinstance(c, str) and len(c) == 1 for c in chars)
                and chars == sorted(set(chars))):
            raise ValueError("a char tokenizer needs 'chars': a sorted list of distinct single characters")
        return CharTokenizer(chars)
    if kind == 'bpe':
        merges, pattern = desc.get('merges'), desc.get('pattern', SPLIT)
        ids, specials = desc.get('ids'), desc.get('specials', {})
        ok = isinstance(merges, list) and isinstance(pattern, str)
        for k, p in enumerate(merges if ok else []):
            ok = ok and isinstance(p, list) and len(p) == 2 and all(type(i) is int and 0 <= i < 256 + k for i in p)
        if not ok:
            raise ValueError("a bpe tokenizer needs 'merges': a list of [a, b] id pairs, each made of earlier ids")
        numbers = (ids or []) + list(specials.values() if isinstance(specials, dict) else [None])
        if not all(type(i) is int and i >= 0 for i in numbers) or ids is not None and len(ids) != 256 + len(merges):
            raise ValueError("a bpe tokenizer's 'ids' must number each of its tokens, and 'specials' map texts to ids")
        try:
            return BPETokenizer(merges, pattern, ids, specials)
        except re.error as e:
            raise ValueError(f"its split pattern does not compile ({e})")
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")
