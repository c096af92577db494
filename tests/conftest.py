"""Shared fixtures. The suite runs offline: HF_HUB_OFFLINE is set before transformers is imported."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The machine is shared and slow: no per-example deadline, fewer examples than hypothesis' default.
settings.register_profile(
    "lighttoken",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "lighttoken"))

#: A hashing-stage schedule short enough for unit tests (the defaults train up to 40 epochs).
FAST_SCHEDULE = {"max_epochs": 2}

#: Words of the tiny WordPiece vocabulary used by the tiny tokenizer fixture.
TINY_WORDS = [
    "the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "was", "for", "on", "are", "with",
    "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word", "but",
    "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your",
    "how", "said", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many",
    "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see",
    "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no",
    "most", "people", "my", "over", "know", "water", "than", "call", "first", "who", "may", "down",
    "side", "been", "now", "find", "any", "new", "work", "part", "take", "get", "place", "made", "live",
    "where", "after", "back", "little", "only", "round", "man", "year", "came", "show", "every", "good",
    "me", "give", "our", "under", "name", "very", "through", "just", "form", "sentence", "great",
    "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before", "move",
    "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also",
    "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even",
    "land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change",
    "went", "light", "kind", "off", "need", "house", "picture", "try", "us", "again",
]


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator (every test that uses it sees the same stream)."""
    return torch.Generator().manual_seed(1234)


def make_planted_matrix(seed: int = 0, vocab: int = 512, dim: int = 32, rank: int = 16) -> torch.Tensor:
    """A ``vocab x dim`` matrix: a rank-``rank`` part (singular values 1 .. 10**-0.5) plus 0.2 Gaussian noise.

    Its rank is above what a truncated SVD can afford at ratio 8 (rank 7 for 512 x 32), which is
    the regime LightToken's hashing stages are for.
    """
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(vocab, rank, generator=g)
    right = torch.randn(rank, dim, generator=g)
    scale = torch.logspace(0, -0.5, rank)
    return (left * scale) @ right + 0.2 * torch.randn(vocab, dim, generator=g)


@pytest.fixture
def planted_matrix() -> torch.Tensor:
    return make_planted_matrix()


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for tiny models: faster, and keeps the shared 2-core machine free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_bert_config():
    from tiny_models import tiny_bert_config

    return tiny_bert_config()


@pytest.fixture
def tiny_bert(tiny_bert_config):
    """A randomly initialised (seeded) tiny BertModel in eval mode."""
    from transformers import BertModel

    torch.manual_seed(0)
    return BertModel(tiny_bert_config).eval()


@pytest.fixture
def tiny_vocab_file(tmp_path_factory) -> str:
    """A 200-token WordPiece vocab.txt (specials first, then words, then single letters)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(".,!?'")
    tokens = list(dict.fromkeys(specials + letters + list(TINY_WORDS)))[:200]
    tokens += [f"##x{i}" for i in range(200 - len(tokens))]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def tiny_tokenizer(tiny_vocab_file):
    """A lower-casing BERT WordPiece tokenizer over the 200 tokens of ``tiny_vocab_file``.

    transformers 5's ``BertTokenizer`` (= ``BertTokenizerFast``) builds its WordPiece model from
    ``vocab=`` (a token -> id dict) and ignores ``vocab_file=``: passed only the file, it would fall back
    to a 5-token vocabulary of special tokens. So the file is read into the dict here.
    """
    from transformers import BertTokenizer

    with open(tiny_vocab_file, encoding="utf-8") as f:
        vocab = {token: i for i, token in enumerate(f.read().splitlines())}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_bert, tiny_tokenizer):
    """The tiny BERT and its tokenizer saved as a model folder (what ``lighttoken compress`` takes)."""
    path = tmp_path / "tiny-bert"
    tiny_bert.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def id_batch(gen, tiny_bert_config):
    """A padded (3 x 10) batch of token ids for the tiny BERT, with its attention mask."""
    ids = torch.randint(5, tiny_bert_config.vocab_size, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, 7:] = 0  # [PAD] is id 0
    mask[1, 7:] = 0
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": ids, "attention_mask": mask}


BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module; its sibling ``bench_io`` stays importable."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
