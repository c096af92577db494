"""The shared fixtures are what they claim to be (a wrong fixture silently weakens every test using it)."""

from __future__ import annotations

from conftest import TINY_WORDS


def test_tiny_tokenizer_uses_the_whole_vocabulary(tiny_tokenizer, tiny_vocab_file):
    with open(tiny_vocab_file, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    assert len(tokens) == 200
    assert len(tiny_tokenizer) == len(tokens)
    assert tiny_tokenizer.get_vocab() == {token: i for i, token in enumerate(tokens)}

    words = ["The", "man", "read", "a", "long", "sentence"]
    encoded = tiny_tokenizer(" ".join(words))["input_ids"]
    expected = [tokens.index(w.lower()) for w in words]
    assert all(w.lower() in TINY_WORDS for w in words)
    assert encoded == [tokens.index("[CLS]"), *expected, tokens.index("[SEP]")]
    assert tiny_tokenizer.unk_token_id not in encoded
