"""Token frequencies from general text, for frequency-aware bit allocation.

Real text is dominated by frequent tokens, so LightToken spends more hashing stages on them. The
frequencies are estimated task-agnostically from `wordfreq` (word frequencies from Wikipedia,
subtitles, news, books, web text and more): each of the ``top_words`` most frequent words is
tokenized with the model's own tokenizer (both as a sentence-initial word and, for tokenizers that
mark word boundaries, after a space) and its frequency is added to every token it produces.
Special tokens (CLS/SEP/BOS/EOS/...) and single-character punctuation, which wordfreq's lists do not
hold, are ranked ahead of all words. Users can pass their own counts or texts instead.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

import torch


def frequencies_from_texts(tokenizer, texts: Iterable[str], vocab_size: int) -> torch.Tensor:
    """Token counts (float, length ``vocab_size``) from tokenizing ``texts`` with ``tokenizer``."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for text in texts:
        ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        counts += torch.bincount(ids, minlength=vocab_size).double()
    return counts


def general_text_frequencies(
    tokenizer, vocab_size: int, *, language: str = "en", top_words: int = 50_000
) -> torch.Tensor:
    """Estimated relative frequency (sums to 1) of every token id in general text of ``language``."""
    try:
        import wordfreq
    except ImportError as err:  # pragma: no cover - wordfreq is a dependency
        raise ImportError("frequency-aware allocation needs `pip install wordfreq`") from err
    words = wordfreq.top_n_list(language, top_words)
    freqs = torch.tensor([wordfreq.word_frequency(w, language) for w in words], dtype=torch.float64)
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    batch = tokenizer(words, add_special_tokens=False)["input_ids"]
    spaced = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    for f, ids_a, ids_b in zip(freqs.tolist(), batch, spaced):
        # half weight on each form; for WordPiece both forms give the same ids
        for ids in (ids_a, ids_b):
            for i in ids:
                if 0 <= i < vocab_size:
                    counts[i] += 0.5 * f
    total = counts.sum()
    if total <= 0:
        raise ValueError("the tokenizer produced no ids inside the vocabulary for general text")
    counts /= total
    top = float(counts.max())
    # special tokens and punctuation first: they are in (nearly) every sequence
    special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < vocab_size]
    punct = tokenizer(list(string.punctuation), add_special_tokens=False)["input_ids"]
    punct += tokenizer([" " + p for p in string.punctuation], add_special_tokens=False)["input_ids"]
    boost = {i for ids in punct if len(ids) == 1 for i in ids if 0 <= i < vocab_size}
    for i in boost:
        counts[i] = max(counts[i], top)
    for i in special:
        counts[i] = 2 * top
    return counts / counts.sum()


def general_text_samples(
    num_texts: int = 256, *, language: str = "en", seed: int = 0, top_words: int = 20_000
) -> list[str]:
    """Pseudo-sentences of general text: words drawn by their wordfreq frequency (calibration text).

    Task-agnostic calibration input for :func:`~lighttoken_hf.compressor.sensitivity.embedding_sensitivity`
    that needs no corpus: each text has 6-25 words drawn independently with probability proportional to
    their frequency in ``language``, capitalised and ending in a full stop. Same seed, same texts.
    """
    import random

    try:
        import wordfreq
    except ImportError as err:  # pragma: no cover - wordfreq is a dependency
        raise ImportError("calibration text needs `pip install wordfreq`") from err
    if num_texts < 1:
        raise ValueError(f"num_texts must be >= 1, got {num_texts}")
    words = wordfreq.top_n_list(language, top_words)
    if not words:
        raise ValueError(f"wordfreq has no word list for language {language!r}")
    weights = [wordfreq.word_frequency(w, language) for w in words]
    rng = random.Random(seed)
    texts = []
    for _ in range(num_texts):
        text = " ".join(rng.choices(words, weights=weights, k=rng.randint(6, 25)))
        texts.append(text[0].upper() + text[1:] + ".")
    return texts


def frequency_rank(frequencies: torch.Tensor) -> torch.Tensor:
    """Position of each token in the descending-frequency order (ties broken by token id)."""
    v = frequencies.numel()
    order = torch.sort(-frequencies.double(), stable=True).indices
    rank = torch.empty(v, dtype=torch.long)
    rank[order] = torch.arange(v)
    return rank
