"""Model rewards: a local Hugging Face sequence-classification reward model scores completions on device.

`LlamaForSequenceClassification`, `Qwen2ForSequenceClassification` (and the Mistral / Qwen3 ones) are the
causal decoder plus a linear head `score.weight` `[C, D]` (no bias) applied to the final normed hidden
state of each row's last non-padding token. The decoder is our Flax `Decoder`, loaded by
`hf.from_pretrained(path, head="none")`; the head is read from the same safetensors.

Texts are tokenized by the reward model's own tokenizer (prompt + completion as plain text, or the two
as a user / assistant exchange through its chat template), left-padded into batches of a fixed
`[batch_size, L]` shape, L the smallest of `length_buckets` that holds the chunk's longest text (longer
texts keep their last L tokens, and are counted): the jitted scorer compiles once per bucket, in
`prepare()`, before training starts.

In a config, the reward function `reward_model` (a factory of `grpo_jax.rewards`) with its options in
`rewards.kwargs.reward_model`: `path` (required), `batch_size`, `length_buckets`, `dtype`, `label`,
`use_chat_template`, `tokenizer`. Its weight and the rule rewards' combine as for any reward function.

Shapes: B texts in a batch, L tokens, D hidden, C = num_labels.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from grpo_jax import hf
from grpo_jax.model import positions_from_mask

log = logging.getLogger(__name__)

HEAD = "score.weight"


def sequence_scores(graphdef, params, score_DxC, tokens_BxL, mask_BxL):
  """Reward-model logits `[B, C]` float32: the `score` head at each row's last token with mask 1 (the
  rightmost real token, so left and right padding give the same scores; as transformers' "last non-pad
  token" whenever the pad id does not occur inside a text). Rows need at least one real token."""
  model = nnx.merge(graphdef, params)
  mask_BxL = mask_BxL.astype(jnp.int32)
  hidden_BxLxD = model(tokens_BxL, positions_from_mask(mask_BxL), mask_BxL, return_hidden=True)
  positions_L = jnp.arange(tokens_BxL.shape[1])
  last_B = jnp.argmax(jnp.where(mask_BxL > 0, positions_L[None, :], -1), axis=-1)
  h_BxD = jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
  return jnp.dot(h_BxD.astype(jnp.float32), score_DxC.astype(jnp.float32))


def check_checkpoint(path) -> tuple[dict, int]:
  """`(config.json, num_labels)` of the checkpoint, after checking (cheaply: no weights are read) that `path` is a local
  `*ForSequenceClassification` directory of a supported model type with a `score.weight` [C, D].
  Raises ValueError naming the path and what is wrong."""
  path = os.fspath(path)
  if not path or not os.path.isdir(path):
    raise ValueError(f"path={path!r} is not a directory (a local Hugging Face reward-model checkpoint)")
  try:
    config = hf.read_hf_config(path)
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"path={path!r}: {e}") from None
  archs = config.get("architectures") or []
  if not any(a.endswith("ForSequenceClassification") for a in archs):
    raise ValueError(f"path={path!r} is a {archs or config.get('model_type')} checkpoint, not a "
                     "*ForSequenceClassification reward model (a causal LM has no score head)")
  if config.get("model_type") not in hf.SUPPORTED_MODEL_TYPES:
    raise ValueError(f"path={path!r}: model_type {config.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(hf.SUPPORTED_MODEL_TYPES)}")
  shape = None
  for filename in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
    with safe_open(filename, framework="numpy") as f:
      if HEAD in f.keys():
        shape = tuple(f.get_slice(HEAD).get_shape())
  if shape is None or len(shape) != 2 or shape[1] != config.get("hidden_size"):
    raise ValueError(f"path={path!r}: no {HEAD} of shape [num_labels, {config.get('hidden_size')}] in its "
                     f"*.safetensors (found {shape})")
  return config, shape[0]


class RewardModel:
  """A loaded reward model: `score_ids(encode(prompts, completions)) -> [n] float32`, the `label` logit.

  Args:
    path: local `*ForSequenceClassification` directory (config.json, *.safetensors, a tokenizer).
    tokenizer: tokenizer directory; None: `path`.
    dtype: activation and parameter dtype ("float32"; "bfloat16" on accelerators).
    batch_size: texts per device call (the last chunk is padded with dummy rows).
    length_buckets: padded lengths; a chunk uses the smallest that fits, longer texts are cut from the
      left to the largest.
    label: which of the C logits is the reward.
    mesh: place the decoder's parameters over this mesh (`sharding.param_shardings`); None: one device.
  """

  def __init__(self, path, *, tokenizer=None, dtype: str = "float32", batch_size: int = 8,
               length_buckets: Sequence[int] = (512,), label: int = 0, mesh=None):
    config, _ = check_checkpoint(path)
    if batch_size < 1 or not length_buckets or min(length_buckets) < 1:
      raise ValueError(f"need batch_size >= 1 and length_buckets >= 1, got {batch_size}, {length_buckets}")
    self.path, self.batch_size = os.fspath(path), int(batch_size)
    self.buckets = tuple(sorted({int(b) for b in length_buckets}))
    model = hf.from_pretrained(self.path, jnp.dtype(dtype), mesh=mesh, head="none")
    self.graphdef, self.params = nnx.split(model)
    with safe_open(self._head_file(), framework="numpy") as f:
      head_CxD = f.get_tensor(HEAD)
    if not 0 <= label < head_CxD.shape[0]:
      raise ValueError(f"label={label} is not one of the {head_CxD.shape[0]} labels of {self.path}")
    self.label = int(label)
    self.score_DxC = jnp.asarray(head_CxD.T.astype(np.float32)).astype(dtype)
    from transformers import AutoTokenizer  # deferred: importing transformers takes seconds
    self.tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer or path))
    pad = self.tokenizer.pad_token_id
    self.pad_id = int(pad if pad is not None else config.get("pad_token_id") or 0)
    self._score = jax.jit(functools.partial(sequence_scores, self.graphdef))
    self.truncated = 0  # texts cut to the largest bucket so far

  def _head_file(self) -> str:
    for filename in sorted(glob.glob(os.path.join(self.path, "*.safetensors"))):
      with safe_open(filename, framework="numpy") as f:
        if HEAD in f.keys():
          return filename
    raise ValueError(f"no {HEAD} in {self.path}")

  def encode(self, prompts: Sequence[str], completions: Sequence[str], use_chat_template: bool = False):
    """Token-id lists of the texts the model scores: prompt + completion, or the chat-template exchange."""
    if not use_chat_template:
      return [self.tokenizer(p + c)["input_ids"] for p, c in zip(prompts, completions, strict=True)]
    if self.tokenizer.chat_template is None:
      raise ValueError(f"the reward model's tokenizer ({self.path}) has no chat template; set "
                       "use_chat_template=False")
    return [self.tokenizer.apply_chat_template(
        [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=True,
        return_dict=True)["input_ids"] for p, c in zip(prompts, completions, strict=True)]

  def score_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Scores `[n]` float32 of token-id lists, `batch_size` at a time in fixed bucket shapes."""
    out = []
    for start in range(0, len(ids), self.batch_size):
      chunk = [list(x)[-self.buckets[-1]:] for x in ids[start:start + self.batch_size]]
      self.truncated += sum(len(x) > self.buckets[-1] for x in ids[start:start + self.batch_size])
      real = len(chunk)
      chunk += [[self.pad_id]] * (self.batch_size - real)
      length = next(b for b in self.buckets if b >= max(len(x) for x in chunk))
      tokens = np.full((self.batch_size, length), self.pad_id, np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for i, x in enumerate(chunk):
        if x:
          tokens[i, length - len(x):], mask[i, length - len(x):] = x, 1
        else:  # an empty text still needs one real token to read the head at
          mask[i, -1] = 1
      logits = self._score(self.params, self.score_DxC, jnp.asarray(tokens), jnp.asarray(mask))
      out.append(np.asarray(jax.device_get(logits))[:real, self.label])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def warm_up(self) -> None:
    """Compiles the scorer for every bucket (so that no reward call pays a compile)."""
    for length in self.buckets:
      self.score_ids([[self.pad_id] * length])


_LOADED: dict[tuple, RewardModel] = {}
_LOCK = threading.Lock()


def load(path, **options) -> RewardModel:
  """A `RewardModel`, loaded once per process for the same path and options (the training and the
  evaluation reward runners share it)."""
  key = (os.path.abspath(os.fspath(path)), json.dumps(options, sort_keys=True, default=str))
  with _LOCK:
    if key not in _LOADED:
      _LOADED[key] = RewardModel(path, **options)
      _LOADED[key].warm_up()
    return _LOADED[key]


def reward_model_reward(path: str = "", *, batch_size: int = 8, length_buckets: Sequence[int] = (512,),
                        dtype: str = "float32", label: int = 0, use_chat_template: bool = False,
                        tokenizer: str = ""):
  """The reward function factory registered as ``reward_model``: `f(prompts, completions, **_)` returns
  the reward model's score of each (prompt, completion). The checkpoint is checked here (cheaply) and
  loaded by `f.prepare()`, which `rewards.RewardRunner` calls once, outside the per-call timeout."""
  _, num_labels = check_checkpoint(path)
  if not isinstance(label, int) or not 0 <= label < num_labels:
    raise ValueError(f"label={label!r} is not allowed; allowed: 0 .. {num_labels - 1} (the checkpoint's "
                     "num_labels)")
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
  buckets = tuple(length_buckets) if isinstance(length_buckets, (list, tuple)) else (length_buckets,)
  if not buckets or not all(isinstance(b, int) and b >= 1 for b in buckets):
    raise ValueError(f"length_buckets={length_buckets!r} is not allowed; allowed: integers >= 1")
  jnp.dtype(dtype)  # a TypeError naming an unknown dtype
  if tokenizer and not os.path.isdir(tokenizer):
    raise ValueError(f"tokenizer={tokenizer!r} is not a directory")
  options = dict(tokenizer=tokenizer or None, dtype=dtype, batch_size=batch_size, length_buckets=buckets,
                 label=label)

  def model() -> RewardModel:
    return load(path, **options)

  def reward_model(prompts, completions, **_) -> list[float]:
    rm = model()
    before = rm.truncated
    scores = rm.score_ids(rm.encode(prompts, completions, use_chat_template))
    if rm.truncated > before:
      log.warning("reward_model: %d texts longer than %d tokens were cut from the left",
                  rm.truncated - before, rm.buckets[-1])
    return [float(s) for s in scores]

  reward_model.prepare = model
  return reward_model
