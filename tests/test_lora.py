"""LoRA against full fine-tuning on a tiny decoder: the step-0 loss, the trainable-parameter count, what an
update changes, the adapters' gradient against the chain rule, the loop's checkpoint and resume, and the
merged export loaded by transformers."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from grpo_jax import config as config_lib
from grpo_jax import hf, lora, loop, testing
from grpo_jax import sharding as shd
from grpo_jax import train as train_lib
from grpo_jax.model import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, P, T, G, V = 8, 4, 5, 4, 32
L, D, F, HEADS, KV, H, R = 2, 32, 64, 4, 2, 8, 4
CFG = ModelConfig.tiny(vocab_size=V, hidden_size=D, intermediate_size=F, num_layers=L, num_heads=HEADS,
                       num_kv_heads=KV, head_dim=H)
LORA = lora.LoRAConfig(rank=R, alpha=8.0)
LOSS = train_lib.LossConfig(beta=0.04, temperature=0.9)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  prompt_mask = np.ones((N, P), np.int32)
  prompt_mask[::3, :2] = 0  # some left padding
  mask = (np.arange(T)[None] < rng.integers(1, T + 1, size=N)[:, None]).astype(np.int32)
  return {"prompt_tokens": rng.integers(3, V, (N, P)).astype(np.int32) * prompt_mask,
          "prompt_mask": prompt_mask, "tokens": rng.integers(3, V, (N, T)).astype(np.int32) * mask,
          "mask": mask, "old_logp": (-rng.uniform(2.5, 4.0, (N, T))).astype(np.float32) * mask,
          "ref_logp": (-rng.uniform(2.5, 4.0, (N, T))).astype(np.float32) * mask,
          "advantages": rng.normal(size=N).astype(np.float32), "loss_mask": mask.astype(np.float32)}


def _trainer(params, graphdef, lora_cfg=None, lr=1e-2):
  mesh = shd.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  tx, sched = train_lib.make_optimizer(lr, warmup_steps=0)
  return train_lib.Trainer(graphdef, params, mesh, tx=tx, schedule=sched, loss_cfg=LOSS,
                           adv_cfg=train_lib.AdvantageConfig(), group_size=G, lora=lora_cfg)


@pytest.fixture(scope="module")
def model():
  return nnx.split(testing.random_model(CFG))  # NumPy draws: no compile per parameter shape


def _adapters(params, cfg, seed=1, b_std=0.2):
  """Adapters of `lora.init_adapters`' structure drawn with NumPy: A ~ N(0, 1/fan_in) and, unlike the
  initial B = 0, B ~ N(0, b_std^2), so that both get gradients and the merge changes the model."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda p: lora.init_adapters(p, cfg, jax.random.PRNGKey(0)), params)

  def draw(path, var):
    shape = var.get_value().shape
    std = b_std if path[-1] == "lora_b" else 1 / np.sqrt(np.prod(shape[1:-1]))
    return var.replace(jnp.asarray(std * rng.standard_normal(shape), jnp.float32))
  return nnx.from_flat_state([(p, draw(p, v)) for p, v in nnx.to_flat_state(abstract)])


def test_adapter_shapes_and_trainable_count_by_hand(model):
  graphdef, params = model
  adapters = jax.eval_shape(lambda p: lora.init_adapters(p, LORA, jax.random.PRNGKey(0)), params)
  flat = {"/".join(p): v.get_value() for p, v in nnx.to_flat_state(adapters)}
  assert flat["layers/attn/q/lora_a"].shape == (L, D, R) and flat["layers/attn/q/lora_b"].shape == (L, R,
                                                                                                   HEADS, H)
  assert flat["layers/attn/o/lora_a"].shape == (L, HEADS, H, R) and flat["layers/attn/o/lora_b"].shape == (
      L, R, D)
  # r (in + out) per layer and projection: q, k, v, o, gate, up, down.
  by_hand = L * R * ((D + HEADS * H) + 2 * (D + KV * H) + (HEADS * H + D) + 2 * (D + F) + (F + D))
  # Per layer q, k, v, o, two norms, gate, up, down; the tied embedding and the final norm.
  full_by_hand = L * (2 * D * HEADS * H + 2 * D * KV * H + 2 * D + 3 * D * F) + V * D + D
  full = _trainer(params, graphdef)
  with_lora = _trainer(params, graphdef, LORA)
  assert lora.num_params(adapters) == with_lora.num_trainable == by_hand == 4096
  assert full.num_trainable == lora.num_params(params) == full_by_hand == 19616
  state = jax.eval_shape(with_lora.init_state, params, jax.random.PRNGKey(0))
  full_state = jax.eval_shape(full.init_state, params, jax.random.PRNGKey(0))
  assert lora.num_params(state.opt_state) == 2 * by_hand + 2  # AdamW moments; Adam and schedule counts
  assert lora.num_params(full_state.opt_state) == 2 * full_by_hand + 2
  qk = jax.eval_shape(lambda p: lora.init_adapters(p, lora.LoRAConfig(rank=R, targets=("q", "k")),
                                                   jax.random.PRNGKey(0)), params)
  assert lora.num_params(qk) == L * R * ((D + HEADS * H) + (D + KV * H))


def test_merge_matches_numpy_and_shares_the_other_leaves(model):
  _, params = model
  cfg = lora.LoRAConfig(rank=R, alpha=6.0, targets=("o", "down"))
  adapters = _adapters(params, cfg)
  merged = lora.merge(params, adapters, cfg.scale)
  a, b = (np.asarray(adapters["layers"]["attn"]["o"][k].get_value()) for k in ("lora_a", "lora_b"))
  w = np.asarray(params["layers"]["attn"]["o"].get_value())  # [L, N, H, D]
  want = w + 1.5 * np.einsum("lnhr,lrd->lnhd", a, b)
  np.testing.assert_allclose(merged["layers"]["attn"]["o"].get_value(), want, rtol=1e-6, atol=1e-6)
  a, b = (np.asarray(adapters["layers"]["mlp"]["down"][k].get_value()) for k in ("lora_a", "lora_b"))
  want = np.asarray(params["layers"]["mlp"]["down"].get_value()) + 1.5 * np.einsum("lfr,lrd->lfd", a, b)
  np.testing.assert_allclose(merged["layers"]["mlp"]["down"].get_value(), want, rtol=1e-6, atol=1e-6)
  adapted = {("layers", "attn", "o"), ("layers", "mlp", "down")}
  flat_base = dict(nnx.to_flat_state(params))
  for path, var in nnx.to_flat_state(merged):
    assert (var.get_value() is flat_base[path].get_value()) == (path not in adapted), path
  assert jax.tree.structure(merged) == jax.tree.structure(params)


def test_step0_loss_equals_full_finetuning_and_only_adapters_move(model):
  graphdef, params = model
  base_copy = jax.tree.map(np.array, params)
  full, with_lora = _trainer(params, graphdef), _trainer(params, graphdef, LORA)
  batch = full.shard_batch(_batch())
  _, m_full = full.step(full.init_state(jax.tree.map(jnp.array, params), jax.random.PRNGKey(0)), batch)
  state = with_lora.init_state(params, jax.random.PRNGKey(0))
  init_adapters = jax.tree.map(np.array, state.params)
  assert all(not np.any(v.get_value()) for p, v in nnx.to_flat_state(init_adapters) if p[-1] == "lora_b")
  state, m_lora = with_lora.step(state, batch)  # B = 0: the forward is the base model's, bit for bit
  assert float(m_lora["loss"]) == float(m_full["loss"]) != 0.0
  state, _ = with_lora.step(state, batch)
  # The base is bit-identical after two updates; B moved at once, A from the second update (dL/dA ∝ B).
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, with_lora.base), base_copy)
  for (path, new), (_, old) in zip(nnx.to_flat_state(state.params), nnx.to_flat_state(init_adapters)):
    assert np.abs(np.asarray(new.get_value()) - old.get_value()).max() > 1e-3, path
  policy = with_lora.policy_params(state.params)
  for (path, var), (_, old) in zip(nnx.to_flat_state(policy), nnx.to_flat_state(base_copy)):
    moved = float(np.abs(np.asarray(var.get_value()) - old.get_value()).max())
    assert (moved > 1e-4) == (path[-1] in lora.TARGETS and path[0] == "layers"), (path, moved)


def test_adapter_gradient_is_the_chain_rule_of_the_full_weight_gradient(model):
  graphdef, params = model
  adapters = _adapters(params, LORA)
  s = LORA.scale
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  merged = lora.merge(params, adapters, s)
  # On-policy old log-probs: no token sits at a clip boundary, so the loss is smooth for the difference.
  batch["old_logp"] = jax.jit(lambda p, b: train_lib.completion_logprobs(
      graphdef, p, b["prompt_tokens"], b["prompt_mask"], b["tokens"], b["mask"], LOSS.temperature)[0])(
          merged, batch)
  merge = functools.partial(lora.merge, params, scale=s)
  loss_of_adapters = jax.jit(lambda a: train_lib.loss_fn(a, graphdef, batch, LOSS, merge)[0])
  g_adapters = jax.jit(jax.grad(loss_of_adapters))(adapters)
  g_full = jax.jit(jax.grad(lambda p: train_lib.loss_fn(p, graphdef, batch, LOSS)[0]))(merged)
  flat_ga, flat_gw = dict(nnx.to_flat_state(g_adapters)), dict(nnx.to_flat_state(g_full))
  flat_a = dict(nnx.to_flat_state(adapters))
  for name, (path, n_in) in lora.TARGETS.items():
    gw = np.asarray(flat_gw[path].get_value())  # dL/dW' at W' = W + s A B
    a, b = (np.asarray(flat_a[path + (k,)].get_value()) for k in ("lora_a", "lora_b"))
    gw = gw.reshape(L, int(np.prod(a.shape[1:-1])), -1)
    a2, b2 = a.reshape(L, -1, R), b.reshape(L, R, -1)
    want_a = s * np.einsum("lio,lro->lir", gw, b2)  # dL/dA = s dL/dW' B^T
    want_b = s * np.einsum("lir,lio->lro", a2, gw)  # dL/dB = s A^T dL/dW'
    for key, want in (("lora_a", want_a), ("lora_b", want_b)):
      got = np.asarray(flat_ga[path + (key,)].get_value()).reshape(want.shape)
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max(), err_msg=name)
      assert np.abs(want).max() > 1e-5, (name, key)
  # ... and the directional derivative matches a central finite difference of the loss itself.
  rng = np.random.default_rng(2)
  direction = jax.tree.map(lambda x: rng.standard_normal(x.shape), adapters)
  norm = np.sqrt(sum(np.sum(d**2) for d in jax.tree.leaves(direction)))
  direction = jax.tree.map(lambda d: jnp.asarray(d / norm, jnp.float32), direction)  # a unit step
  eps = 1e-2
  shifted = lambda sign: jax.tree.map(lambda x, d: x + sign * eps * d, adapters, direction)  # noqa: E731
  fd = (float(loss_of_adapters(shifted(1))) - float(loss_of_adapters(shifted(-1)))) / (2 * eps)
  exact = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(g_adapters), jax.tree.leaves(direction)))
  assert abs(exact) > 1e-3 and fd == pytest.approx(exact, rel=1e-2)


def test_merged_export_loads_in_transformers_with_our_logits(tmp_path):
  hf_config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                       tie_word_embeddings=False)
  testing.make_tiny_hf_checkpoint(hf_config, tmp_path / "base")
  graphdef, base = nnx.split(hf.from_pretrained(tmp_path / "base", jnp.float32))
  cfg = lora.LoRAConfig(rank=4, alpha=8.0)
  adapters = _adapters(base, cfg, b_std=0.3)
  merged = lora.merge(base, adapters, cfg.scale)
  hf.save_pretrained(nnx.merge(graphdef, merged), tmp_path / "export")
  theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, 64, (2, 9))
  with torch.no_grad():
    want = theirs(torch.tensor(tokens)).logits.numpy()
  forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
  ours = np.asarray(forward(merged, jnp.asarray(tokens)))
  assert np.abs(ours - want).max() < 1e-4
  assert np.abs(np.asarray(forward(base, jnp.asarray(tokens))) - want).max() > 1e-2  # the adapters count


def _loop_config(tmp_path, **lora_kw):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.model.tiny.update(hidden_size=32, intermediate_size=64, num_layers=2, head_dim=8)
  c.task.kwargs.update(num_train=64, num_eval=8)
  reward = tmp_path / "varied.py"  # an untrained model gets no exact matches: a reward that varies
  reward.write_text("def varied(prompts, completions, **kw):\n"
                    "  return [float(sum(map(ord, c)) % 3 == 0) for c in completions]\n")
  c.rewards.names, c.rewards.correctness = (f"{reward}:varied",), "exact_match"
  c.optim.warmup_steps = 0
  c.rollout.prompts_per_step = 4
  c.grpo.update(group_size=4, beta=0.04)
  c.lora.update(rank=4, **lora_kw)
  c.sft.steps = 0
  c.train.update(num_steps=2, progress_bar=False, sample_every=0)
  c.eval.update(every=0, num_examples=8, batch_size=8, k=0)
  c.checkpoint.update(every=1, async_save=False)
  return c


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_loop_checkpoints_adapters_only_and_resumes(tmp_path, monkeypatch):
  c, workdir = _loop_config(tmp_path, targets=("q", "v", "down")), str(tmp_path / "run")
  starts = []  # per run: (the experiment's initial params, the state, the reference the loop keeps)

  def spy(exp, ckpt, fresh_start, original=loop._init_or_restore):
    out = original(exp, ckpt, fresh_start)
    starts.append((exp.params, out[1], out[2]))
    return out
  monkeypatch.setattr(loop, "_init_or_restore", spy)
  loop.train(c, workdir)
  rows = _rows(workdir)
  # Step 1 updates from B = 0: the policy is the base, which is the reference, so the KL is exactly 0.
  assert rows[1]["kl"] == 0.0 and rows[2]["kl"] > 0
  step2 = os.path.join(workdir, "checkpoints", "2")
  meta = json.load(open(os.path.join(step2, "state", "_METADATA")))["tree_metadata"]
  params = [k for k in meta if k.startswith("('params'")]
  assert params and all("'lora_a'" in k or "'lora_b'" in k for k in params), params
  assert len(params) == 6 and not os.path.exists(os.path.join(step2, "ref"))  # no base in it
  shutil.rmtree(step2)  # resume from step 1: the base is rebuilt, the adapters and moments restored
  loop.train(c, workdir)
  again = _rows(workdir)
  volatile = ("time/", "throughput/")
  same = lambda r: {k: v for k, v in r.items() if not k.startswith(volatile)}  # noqa: E731
  assert [r["step"] for r in again] == [0, 1, 2] and same(again[2]) == same(rows[2])
  assert len(starts) == 2
  for initial, state, ref in starts:  # fresh start and resume: the reference is the base itself, no copy
    assert all(a is b for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(initial)))
    assert all(p[-1] in ("lora_a", "lora_b") for p, _ in nnx.to_flat_state(state.params))


@pytest.mark.parametrize("key,value,named", [
    ("lora.rank", -1, "lora.rank"),
    ("lora.alpha", 0.0, "lora.alpha"),
    ("lora.targets", ("q", "qkv"), "lora.targets"),
    ("lora.targets", ("q", "q"), "lora.targets"),
    ("lora.targets", (), "lora.targets"),
    ("grpo.ref_reset_every", 5, "grpo.ref_reset_every"),
])
def test_lora_config_errors_name_the_key(key, value, named):
  c = config_lib.load_config(os.path.join(ROOT, "experiments", "default.py"))
  c.lora.rank = 8
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, 1)
  assert e.value.key == named
