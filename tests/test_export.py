"""Tokenizers saved beside exported weights load in transformers and encode as ours do."""

import transformers

from grpo_jax.tokenizer import HFTokenizer, CharTokenizer, make_tiny_hf_tokenizer

TEXTS = ("12+34=46", "what is 7*8? 56\n", "Upper Case and tabs\t", "<eos> <pad> as text", "é", "")


def test_char_tokenizer_exports_an_equivalent_hf_tokenizer(tmp_path):
  ours = CharTokenizer()
  ours.save_pretrained(tmp_path)
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert len(theirs) == ours.vocab_size
  assert (theirs.pad_token_id, theirs.bos_token_id, theirs.eos_token_id) == (ours.pad_id, ours.bos_id,
                                                                             ours.eos_id)
  for text in TEXTS:
    ids = theirs(text)["input_ids"]
    assert ids == ours.encode(text), text  # specials in the text stay characters, unknowns are <unk>
    assert theirs.decode(ids) == ours.decode(ids, skip_special=False)
  messages = [{"role": "system", "content": "sum: "}, {"role": "user", "content": "12+34="}]
  assert (theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
          == ours.apply_chat_template(messages) == "sum: 12+34=")


def test_hf_tokenizer_saves_its_vocabulary_and_chat_template(tmp_path):
  make_tiny_hf_tokenizer(tmp_path / "src")
  ours = HFTokenizer(str(tmp_path / "src"))
  ours.save_pretrained(tmp_path / "out")
  reloaded = HFTokenizer(str(tmp_path / "out"))
  assert reloaded.vocab_size == ours.vocab_size and reloaded.eos_id == ours.eos_id
  for text in TEXTS:
    assert reloaded.encode(text) == ours.encode(text), text
  messages = [{"role": "user", "content": "what is 1+1?"}]
  assert reloaded.apply_chat_template(messages) == ours.apply_chat_template(messages)
  assert reloaded.hf.chat_template == ours.hf.chat_template is not None
