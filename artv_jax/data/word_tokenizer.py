"""A CLIP tokenizer for a closed vocabulary, for models trained from scratch (the demo).

Pretrained runs use the tokenizer of the converted checkpoint. A from-scratch model on the
synthetic data set only ever sees a few dozen words, so we learn byte-pair merges on exactly
those words (every word becomes one token) and save them in CLIP's vocab.json / merges.txt
format: ``transformers.CLIPTokenizer`` then loads it like any SD tokenizer.
"""
import collections
import json
import re
from typing import Iterable

from etils import epath

from artv_jax import paths

_START, _END = "<|startoftext|>", "<|endoftext|>"


def _learn_merges(words: set[str]) -> list[tuple[str, str]]:
  """BPE training on the given words, until each word is a single symbol."""
  pieces = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
  merges = []
  while True:
    counts = collections.Counter()
    for symbols in pieces.values():
      counts.update(zip(symbols, symbols[1:]))
    if not counts:
      return merges
    # Most frequent pair; ties broken alphabetically so the result is deterministic.
    pair = min(counts, key=lambda p: (-counts[p], p))
    merges.append(pair)
    for word, symbols in pieces.items():
      merged, i = [], 0
      while i < len(symbols):
        if tuple(symbols[i:i + 2]) == pair:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      pieces[word] = merged


def write_word_tokenizer(texts: Iterable[str], out_dir: paths.PathLike,
                         max_length: int = 16) -> None:
  """Writes a CLIP tokenizer (vocab.json, merges.txt, configs) covering the words of ``texts``.

  Args:
    texts: sentences whose lower-cased words must each be one token.
    out_dir: folder to write (local or a URI); load a local one with
      ``CLIPTokenizer.from_pretrained(out_dir)``.
    max_length: the tokenizer's model_max_length (text length the encoder sees, with the
      start and end tokens).
  """
  words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
  merges = _learn_merges(words)
  # Single characters too, so an unseen word still tokenizes (letter by letter).
  letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
  symbols = letters + [c + "</w>" for c in letters] + ["".join(m) for m in merges]
  vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
  vocab[_START], vocab[_END] = len(vocab), len(vocab) + 1
  out_dir = epath.Path(out_dir)
  paths.write_atomic(out_dir / "vocab.json", json.dumps(vocab))
  paths.write_atomic(out_dir / "merges.txt",
                     "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  paths.write_atomic(out_dir / "tokenizer_config.json", json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
       "bos_token": _START, "eos_token": _END, "unk_token": _END, "pad_token": _END},
      indent=2))
