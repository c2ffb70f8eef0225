"""CharTokenizer and HFTokenizer: round trips, left padding, chat templates, on locally built tokenizers."""
import numpy as np
import pytest

from grpo_jax.tokenizer import (TINY_CHAT_TEMPLATE, CharTokenizer, HFTokenizer, load_tokenizer,
                make_tiny_hf_tokenizer)

TEXTS = ["12+34=46", "what is 7*8? 56", "using the numbers [3, 5, 7]", "(1 + 2) / 3 = 1", ""]


# ---------------------------------------------------------------------------------------------- char
def test_char_vocab_layout():
  tok = CharTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.encode("0") == [4] and tok.encode("9") == [13] and tok.encode("+") == [14]
  assert tok.vocab_size == 4 + 10 + 8 + 26 + 10  # specials, digits, + - * / = ( ) space, a-z, punctuation
  covered = "0123456789+-*/=() abcdefghijklmnopqrstuvwxyz.,?!:;'<>\n"
  ids = tok.encode(covered)
  assert len(set(ids)) == len(covered) and tok.unk_id not in ids and max(ids) == tok.vocab_size - 1


@pytest.mark.parametrize("text", ["12+34=46", "(9-3)*2/4", "the answer is 7.", "<answer> 1 </answer>\n", ""])
def test_char_round_trip(text):
  tok = CharTokenizer()
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode(text, add_bos=True) == [tok.bos_id] + tok.encode(text)


def test_char_unknown_eos_and_specials():
  tok = CharTokenizer()
  assert tok.encode("A#") == [3, 3]
  ids = tok.encode("12", add_bos=True) + [tok.eos_id] + tok.encode("99")
  assert tok.decode(ids) == "12"
  assert tok.decode(ids, skip_special=False) == "<bos>12<eos>"
  assert tok.decode([0, 0] + tok.encode("5")) == "5"  # left padding is skipped
  assert tok.decode(np.array(tok.encode("7+1"), np.int32)) == "7+1"
  with pytest.raises(ValueError, match="outside"):
    tok.decode([tok.vocab_size])


def test_char_left_padding():
  tok = CharTokenizer()
  tokens, mask = tok.batch_encode_left_padded(["1+2=", "34", ""], 5)
  assert tokens.dtype == np.int32 and mask.dtype == np.int32
  np.testing.assert_array_equal(tokens, [[0] + tok.encode("1+2="), [0, 0, 0] + tok.encode("34"), [0] * 5])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0] * 5])
  tokens, mask = tok.batch_encode_left_padded(["1+2="], 5, add_bos=True)
  np.testing.assert_array_equal(tokens, [[1] + tok.encode("1+2=")])
  with pytest.raises(ValueError, match="'123456'.*6 tokens.*length 4"):
    tok.batch_encode_left_padded(["12", "123456", "1"], 4)


def test_char_chat_template_concatenates():
  msgs = [{"role": "system", "content": "be brief. "}, {"role": "user", "content": "1+1="}]
  assert CharTokenizer().apply_chat_template(msgs) == "be brief. 1+1="
  assert isinstance(load_tokenizer("char"), CharTokenizer)


# ------------------------------------------------------------------------------------------------ HF
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_tok")
  make_tiny_hf_tokenizer(path)
  return path


def test_tiny_tokenizer_is_deterministic(tiny_dir, tmp_path):
  make_tiny_hf_tokenizer(tmp_path)
  assert (tmp_path / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_hf_round_trip_matches_transformers(tiny_dir):
  from transformers import AutoTokenizer
  tok = load_tokenizer(str(tiny_dir))
  reference = AutoTokenizer.from_pretrained(str(tiny_dir))
  assert isinstance(tok, HFTokenizer)
  for text in TEXTS + ["Mixed Case, digits 0123456789 and <think> tags </think>"]:
    ids = tok.encode(text)
    assert ids == reference(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
  assert tok.vocab_size == len(reference)


def test_hf_specials_eos_and_padding(tiny_dir):
  tok = load_tokenizer(str(tiny_dir))
  assert tok.pad_id == tok.hf.convert_tokens_to_ids("<|endoftext|>")
  assert tok.eos_id == tok.hf.convert_tokens_to_ids("<|im_end|>") and tok.bos_id is None
  ids = tok.encode("12+3") + [tok.eos_id] + tok.encode("junk")
  assert tok.decode(ids) == "12+3"
  assert tok.decode(ids, skip_special=False) == "12+3<|im_end|>"
  tokens, mask = tok.batch_encode_left_padded(["12+34=", "7"], 12)
  for row, m, text in zip(tokens, mask, ["12+34=", "7"]):
    n = len(tok.encode(text))
    assert row[-n:].tolist() == tok.encode(text) and (row[:-n] == tok.pad_id).all()
    assert m.tolist() == [0] * (12 - n) + [1] * n
  with pytest.raises(ValueError, match="longer than the prompt length 2"):
    tok.batch_encode_left_padded(["the quick brown fox"], 2)


def test_hf_chat_template(tiny_dir):
  tok = load_tokenizer(str(tiny_dir))
  msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "1+1="}]
  expected = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"
  assert tok.apply_chat_template(msgs) == expected
  assert tok.apply_chat_template(msgs, add_generation_prompt=False) == expected.removesuffix(
    "<|im_start|>assistant\n")
  assert tok.hf.chat_template == TINY_CHAT_TEMPLATE


def test_hf_pad_falls_back_to_eos(tmp_path):
  make_tiny_hf_tokenizer(tmp_path, with_pad=False)
  tok = load_tokenizer(str(tmp_path))
  assert tok.hf.pad_token_id is None and tok.pad_id == tok.eos_id
  tokens, _ = tok.batch_encode_left_padded(["1"], 3)
  assert (tokens[0, :-1] == tok.eos_id).all()


def test_hf_wrapper_of_a_tokenizer_object_without_chat_template():
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, "1": 3, "+": 4, "=": 5}
  raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
  tok = HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="[EOS]", pad_token="[PAD]",
                       unk_token="[UNK]"))
  assert tok.encode("1+1=") == [3, 4, 3, 5] and tok.encode("1x") == [3, 2]
  assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (6, 0, 1)
  with pytest.raises(ValueError, match="use_chat_template=False"):
    tok.apply_chat_template([{"role": "user", "content": "1+1="}])
