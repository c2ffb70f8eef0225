"""A reward for the multi-process tests that varies within every group of a barely trained model (so the
loss and gradient are not zero): the number of distinct characters of the completion, over 4."""


def distinct_chars(prompts, completions, **_):
  return [len(set(c)) / 4.0 for c in completions]
