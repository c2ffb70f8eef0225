"""Writes the shared inputs of the peer benchmark into one directory:

  model/         a random tiny Qwen2 (hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 704, tied embeddings),
                 float32 safetensors, made with transformers + `save_pretrained`, plus the tokenizer
  prompts.jsonl  two-digit addition questions, chat-formatted, with the sum as the answer

Usage: python benchmarks/peers/make_checkpoint.py OUT_DIR [--num_prompts 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import common  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out_dir")
  ap.add_argument("--num_prompts", type=int, default=512)
  args = ap.parse_args()

  import torch
  import transformers
  from grpo_jax.tasks.arithmetic import make_arithmetic
  from grpo_jax.tokenizer import make_tiny_hf_tokenizer

  model_dir = os.path.join(args.out_dir, "model")
  os.makedirs(model_dir, exist_ok=True)
  tok = make_tiny_hf_tokenizer(model_dir, vocab_size=common.TOKENIZER_VOCAB)
  torch.manual_seed(common.SEED)
  config = transformers.Qwen2Config(
      vocab_size=len(tok), max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
      bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
      use_sliding_window=False, **common.MODEL)
  model = transformers.Qwen2ForCausalLM(config).to(torch.float32)
  model.generation_config.eos_token_id = tok.eos_token_id
  model.generation_config.pad_token_id = tok.pad_token_id
  model.save_pretrained(model_dir, safe_serialization=True)

  rows = []
  for ex in make_arithmetic(args.num_prompts, seed=common.SEED, num_digits=2, num_operands=2, ops="+"):
    text = tok.apply_chat_template([{"role": "user", "content": f"What is {ex['question']}?"}],
                                   tokenize=False, add_generation_prompt=True)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    if n > common.PROMPT_LEN:
      raise ValueError(f"prompt {text!r} has {n} tokens > PROMPT_LEN={common.PROMPT_LEN}")
    rows.append({"prompt": text, "answer": ex["answer"]})
  with open(os.path.join(args.out_dir, "prompts.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  n_params = sum(p.numel() for p in model.parameters())
  print(f"wrote {model_dir} ({n_params / 1e6:.2f} M params) and {len(rows)} prompts")


if __name__ == "__main__":
  main()
