"""Model rewards: our Flax reward model against transformers' *ForSequenceClassification on tiny random
checkpoints, the `reward_model` reward function (fixed buckets, one compile each) and its config knob."""

import os
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from grpo_jax import config as config_lib
from grpo_jax import reward_model as rm_lib
from grpo_jax import rewards, testing
from grpo_jax.tokenizer import make_tiny_hf_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
_COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, rms_norm_eps=1e-5)
ARCHS = {"llama": (transformers.LlamaConfig, transformers.LlamaForSequenceClassification, 1),
         "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForSequenceClassification, 2)}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, tmp_path_factory):
  """(directory, float32 torch reward model, tokenizer) of a random reward model."""
  config_cls, model_cls, num_labels = ARCHS[request.param]
  path = str(tmp_path_factory.mktemp(f"rm_{request.param}"))
  tok = make_tiny_hf_tokenizer(path)
  cfg = config_cls(vocab_size=len(tok), num_labels=num_labels, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, **_COMMON)
  torch.manual_seed(0)
  model = model_cls(cfg).float()
  testing.randomize_torch_model(model, seed=1)
  model.eval().save_pretrained(path)
  return path, model, tok


def _torch_scores(model, ids_list):
  """Each sequence alone (no padding): the reference."""
  with torch.no_grad():
    return np.stack([model(torch.tensor([ids])).logits[0].numpy() for ids in ids_list])


def _ids(tok, n=5, seed=0):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, len(tok), size=int(k))) for k in rng.integers(2, 14, size=n)]


def test_scores_match_torch_with_left_and_right_padding(checkpoint):
  path, ref, tok = checkpoint
  model = rm_lib.RewardModel(path, batch_size=5, length_buckets=(16,))
  ids = _ids(tok)
  want = _torch_scores(ref, ids)
  assert np.abs(want).max() > 0.1  # not trivially small numbers
  length = 16
  for side in ("left", "right"):
    tokens = np.full((len(ids), length), tok.pad_token_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, x in enumerate(ids):
      sl = slice(length - len(x), length) if side == "left" else slice(0, len(x))
      tokens[i, sl], mask[i, sl] = x, 1
    got = np.asarray(model._score(model.params, model.score_DxC, jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=side)
    with torch.no_grad():  # transformers' own padded batch reads the same token
      padded = ref(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(got, padded, atol=TOL, rtol=0, err_msg=side)


def test_reward_function_matches_torch_in_fixed_buckets(checkpoint):
  path, ref, _ = checkpoint
  fn = rewards.get_reward_fn("reward_model", path=path, batch_size=2, length_buckets=[8, 32], label=0)
  rm = fn.prepare()  # what RewardRunner calls: loads and compiles both buckets
  assert rm._score._cache_size() == 2
  prompts = ["12+34=", "What is 7*8? ", "the quick brown fox", "0.5", "Using the numbers [3, 5, 7]"]
  completions = ["46", " 56", " jumps over", "", " create an equation that equals 22."]
  got = fn(prompts, completions)
  tok = transformers.AutoTokenizer.from_pretrained(path)  # as transformers loads the reward model's own
  ids = [tok(p + c)["input_ids"] for p, c in zip(prompts, completions)]
  assert max(map(len, ids)) > 8 and min(map(len, ids)) <= 8  # both buckets are used
  np.testing.assert_allclose(got, _torch_scores(ref, ids)[:, 0], atol=TOL, rtol=0)
  assert rm._score._cache_size() == 2  # five texts, three chunks, no new compile
  # The chat-template variant scores the user / assistant exchange.
  chat = rewards.get_reward_fn("reward_model", path=path, batch_size=2, length_buckets=[64],
                               use_chat_template=True)
  chat_ids = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                      tokenize=True, return_dict=True)["input_ids"]
              for p, c in zip(prompts[:2], completions[:2])]
  np.testing.assert_allclose(chat(prompts[:2], completions[:2]), _torch_scores(ref, chat_ids)[:, 0],
                             atol=TOL, rtol=0)


def test_long_texts_keep_their_last_tokens(checkpoint):
  path, ref, tok = checkpoint
  rm = rm_lib.load(path, batch_size=2, length_buckets=(8,))
  ids = _ids(tok, n=3, seed=1)
  before = rm.truncated
  got = rm.score_ids(ids)
  np.testing.assert_allclose(got, _torch_scores(ref, [x[-8:] for x in ids])[:, 0], atol=TOL, rtol=0)
  assert rm.truncated - before == sum(len(x) > 8 for x in ids) > 0


def test_decoder_loads_without_a_language_model_head(checkpoint):
  path, _, _ = checkpoint
  from grpo_jax import hf
  with pytest.raises(ValueError, match="score.weight|lm_head"):
    hf.from_pretrained(path, jnp.float32)  # a causal-LM load refuses the classifier checkpoint
  model = hf.from_pretrained(path, jnp.float32, head="none")
  assert "lm_head" not in nnx.state(model)


# ------------------------------------------------------------------------------------- the config knob
def _config(**kwargs):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.rewards.names = ("exact_match", "reward_model")
  c.rewards.weights = (1.0, 0.5)
  c.rewards.kwargs = {"reward_model": kwargs}
  return c


def test_config_knob_validates_the_checkpoint(checkpoint, tmp_path):
  path, _, tok = checkpoint
  config_lib.validate(_config(path=path, batch_size=4, length_buckets=(64, 256)), 8)  # a good one
  causal = tmp_path / "causal"
  testing.make_tiny_hf_checkpoint(transformers.LlamaConfig(vocab_size=len(tok), **_COMMON), causal)
  (tmp_path / "empty").mkdir()
  for kwargs, match in [({}, "path='' is not a directory"),
                        ({"path": str(tmp_path / "missing")}, "is not a directory"),
                        ({"path": str(tmp_path / "empty")}, "no config.json"),
                        ({"path": str(causal)}, "not a \\*ForSequenceClassification reward model"),
                        ({"path": path, "label": 7}, "label=7 is not allowed"),
                        ({"path": path, "batch_size": 0}, "batch_size=0"),
                        ({"path": path, "no_such_option": 1}, "no_such_option")]:
    with pytest.raises(config_lib.ConfigError, match=match) as e:
      config_lib.validate(_config(**kwargs), 8)
    assert e.value.key == "rewards.names" and "reward_model" in str(e.value)


def test_runner_prepares_outside_the_call_timeout():
  """A slow `prepare` (loading, compiling) runs once at construction, not under the per-call timeout."""
  calls = []

  def fn(prompts, completions, **_):
    return [1.0] * len(completions)

  def prepare():
    calls.append(threading.current_thread().name)
    time.sleep(0.3)
  fn.prepare = prepare
  runner = rewards.RewardRunner([fn], timeout_s=0.1)
  assert len(calls) == 1 and calls[0] == threading.current_thread().name
  result = runner(["p", "q"], ["a", "b"])
  np.testing.assert_array_equal(result.total, [1.0, 1.0])
  assert result.failures == {"fn": 0} and len(calls) == 1
