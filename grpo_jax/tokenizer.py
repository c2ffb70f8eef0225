"""Tokenizers with one interface: the shipped character-level `CharTokenizer` and `HFTokenizer`, a thin
wrapper around a local Hugging Face tokenizer.

Both provide ``vocab_size``, ``pad_id``, ``eos_id``, ``bos_id``, ``encode``, ``decode``,
``batch_encode_left_padded``, ``apply_chat_template`` and ``save_pretrained`` (a directory that
``transformers.AutoTokenizer`` loads), so prompt and export code is the same for either.
`make_tiny_hf_tokenizer` builds a small byte-level BPE tokenizer on disk for tests and benchmarks (no downloads).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

_CHAR_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Everything the arithmetic and Countdown prompts need; other characters map to <unk>.
_CHAR_ALPHABET = "0123456789+-*/=() abcdefghijklmnopqrstuvwxyz.,?!:;'<>\n"
# What `CharTokenizer.apply_chat_template` does, for the exported Hugging Face copy of it.
CHAR_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _left_pad(rows: Sequence[list[int]], texts: Sequence[str], length: int,
       pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Stack token lists right-aligned into ([B, length] tokens, [B, length] mask), both int32."""
  longest = max(range(len(rows)), key=lambda i: len(rows[i]), default=None)
  if longest is not None and len(rows[longest]) > length:
    raise ValueError(f"text {texts[longest][:200]!r} is {len(rows[longest])} tokens, longer than the "
             f"prompt length {length}; raise the prompt length or shorten the prompt")
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    if row:  # a [-0:] slice would address the whole row
      tokens[i, -len(row):] = row
      mask[i, -len(row):] = 1
  return tokens, mask


class CharTokenizer:
  """Character-level tokenizer with a fixed vocabulary: pad=0, bos=1, eos=2, unk=3, then
  ``0-9 + - * / = ( ) space a-z . , ? ! : ; ' < > newline``. Other characters (upper case included) become
  <unk> rather than being folded, so encode/decode round-trips exactly on the covered alphabet."""

  pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

  def __init__(self):
    self._ids = {c: i + len(_CHAR_SPECIALS) for i, c in enumerate(_CHAR_ALPHABET)}
    self._chars = list(_CHAR_SPECIALS) + list(_CHAR_ALPHABET)

  @property
  def vocab_size(self) -> int:
    return len(self._chars)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [self._ids.get(c, self.unk_id) for c in text]
    return [self.bos_id] + ids if add_bos else ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Text up to the first eos. Special tokens are dropped, or rendered as ``<pad>`` etc. when
    ``skip_special`` is False."""
    out = []
    for i in (int(i) for i in ids):
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
      if i == self.eos_id:
        if not skip_special:
          out.append(self._chars[i])
        break
      if i >= len(_CHAR_SPECIALS) or not skip_special:
        out.append(self._chars[i])
    return "".join(out)

  def batch_encode_left_padded(self, texts: Sequence[str], length: int,
                 add_bos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (tokens [B, length], mask [B, length]) int32; ValueError if a text is too long."""
    return _left_pad([self.encode(t, add_bos) for t in texts], texts, length, self.pad_id)

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Concatenated message contents: a char model has no chat format, but callers stay uniform."""
    del add_generation_prompt
    return "".join(m["content"] for m in messages)

  def to_hf(self):
    """The same tokenizer as a transformers ``PreTrainedTokenizerFast``: a WordLevel vocabulary of these
    58 symbols with the same ids, one token per character, ``<unk>`` for other characters, the special
    tokens matched only by id (``split_special_tokens``: the text "<eos>" is five characters, as here),
    and a chat template that concatenates the message contents, as `apply_chat_template` does."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(self._chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join without the spaces WordLevel would put between them
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>", unk_token="<unk>", split_special_tokens=True)
    hf.chat_template = CHAR_CHAT_TEMPLATE
    return hf

  def save_pretrained(self, path: str | os.PathLike) -> list[str]:
    """Writes `to_hf()` to ``path`` (tokenizer.json, tokenizer_config.json, chat_template.jinja), so that
    ``transformers.AutoTokenizer.from_pretrained(path)`` encodes every text with the ids of `encode`."""
    return list(self.to_hf().save_pretrained(os.fspath(path)))


class HFTokenizer:
  """The `CharTokenizer` interface over a Hugging Face tokenizer (an instance or a local directory).

  ``pad_id`` falls back to ``eos_id`` when the tokenizer has no pad token; ``vocab_size`` is
  ``len(tokenizer)`` (the model's embedding table may be larger). ``encode`` adds no special tokens except
  an optional bos, because chat templates already contain them.
  """

  def __init__(self, path_or_tokenizer, **from_pretrained_kwargs):
    if isinstance(path_or_tokenizer, (str, os.PathLike)):
      from transformers import AutoTokenizer  # deferred: importing transformers takes seconds
      path_or_tokenizer = AutoTokenizer.from_pretrained(os.fspath(path_or_tokenizer),
                               **from_pretrained_kwargs)
    self.hf = path_or_tokenizer
    if self.hf.eos_token_id is None:
      raise ValueError("the tokenizer has no eos token; generation could not stop")

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  @property
  def eos_id(self) -> int:
    return self.hf.eos_token_id

  @property
  def pad_id(self) -> int:
    return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id

  @property
  def bos_id(self) -> int | None:
    return self.hf.bos_token_id

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = list(self.hf(text, add_special_tokens=False)["input_ids"])
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Text up to (and, with ``skip_special=False``, including) the first eos."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + (0 if skip_special else 1)]
    return self.hf.decode(ids, skip_special_tokens=skip_special)

  def batch_encode_left_padded(self, texts: Sequence[str], length: int,
                 add_bos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (tokens [B, length], mask [B, length]) int32; ValueError if a text is too long."""
    return _left_pad([self.encode(t, add_bos) for t in texts], texts, length, self.pad_id)

  def save_pretrained(self, path: str | os.PathLike) -> list[str]:
    """The wrapped tokenizer's own ``save_pretrained``: its vocabulary, special tokens and chat template."""
    return list(self.hf.save_pretrained(os.fspath(path)))

  def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    if self.hf.chat_template is None:  # base models: transformers' own error does not say what to do
      raise ValueError("this tokenizer has no chat template; format prompts with use_chat_template=False")
    return self.hf.apply_chat_template(list(messages), tokenize=False,
                      add_generation_prompt=add_generation_prompt)


def load_tokenizer(path_or_name: str, **kwargs) -> CharTokenizer | HFTokenizer:
  """``"char"`` -> `CharTokenizer`; anything else is a Hugging Face tokenizer directory -> `HFTokenizer`."""
  return CharTokenizer() if path_or_name == "char" else HFTokenizer(path_or_name, **kwargs)


# A ChatML template like Qwen's, small enough to read in a test failure message.
TINY_CHAT_TEMPLATE = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_hf_tokenizer(path: str | os.PathLike, *, vocab_size: int = 384, with_pad: bool = True):
  """Train a byte-level BPE tokenizer in memory and ``save_pretrained`` it to ``path``; returns the
  ``PreTrainedTokenizerFast``. Byte-level means every string (digits, + - = , letters, spaces, tags) encodes
  without <unk>. Specials: ``<|endoftext|>`` (pad, omitted when ``with_pad=False``), ``<|im_start|>``,
  ``<|im_end|>`` (eos); no bos, like Qwen. Deterministic: the same files every call."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  specials = (["<|endoftext|>"] if with_pad else []) + ["<|im_start|>", "<|im_end|>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  corpus = ["12+34=46", "What is 7*8? 56", "Using the numbers [3, 5, 7], create an equation that equals 22.",
       "<think> reasoning </think> <answer> (1 + 2) / 3 </answer>", "the quick brown fox jumps over 0.5",
       "You are a helpful assistant. Solve the problem step by step: 1,234 - 99 = 1,135"] * 4
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
    vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False))
  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                 pad_token="<|endoftext|>" if with_pad else None,
                 additional_special_tokens=["<|im_start|>"])
  hf.chat_template = TINY_CHAT_TEMPLATE
  hf.save_pretrained(os.fspath(path))
  return hf
