"""SQuAD v1.1 extractive question answering: data, features, postprocessing and the official EM/F1.

Typical use (what ``examples/finetune_squad.py`` and the downstream benchmark do)::

    from lighttoken_hf.tasks import squad
    data = squad.load_squad(data_dir="../shared/data")            # split by article, seeded
    train = squad.prepare_train_features(data["train"], tokenizer, max_length=256, doc_stride=64)
    features = squad.prepare_eval_features(data["validation"], tokenizer, max_length=256, doc_stride=64)
    ...train with Trainer...
    metrics = squad.evaluate_squad(trainer, data["validation"], features)   # {"exact_match", "f1"}

Long contexts are cut into overlapping windows (``doc_stride`` tokens of overlap) with a fast
tokenizer's offset mapping; a training window that does not contain the answer is labelled with the
``[CLS]`` position. Predictions take the best-scoring valid span over all windows of an example
(n-best start/end candidates, spans at most ``max_answer_length`` tokens).

EM/F1 are the official SQuAD v1.1 evaluation script's (lower-casing, removing punctuation, the
articles a/an/the and extra whitespace; maximum over the gold answers), on its 0-100 scale.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "evaluate_squad",
    "exact_match_score",
    "f1_score",
    "find_squad_file",
    "load_squad",
    "normalize_answer",
    "postprocess_predictions",
    "prepare_eval_features",
    "prepare_train_features",
    "split_by_article",
    "squad_metrics",
]

_SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")


# ---------------------------------------------------------------------------------------------------
# Official SQuAD v1.1 metric (re-implemented from the evaluation script's definitions)


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, the articles a/an/the and extra whitespace (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of the normalized strings (bag of tokens, counted with multiplicity)."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Official v1.1 ``exact_match`` and ``f1`` (0-100), each the max over an example's gold answers.

    Args:
        predictions: example id -> predicted answer text.
        references: example id -> the gold answer texts. Every reference id must have a prediction
            (a missing one counts 0, as in the official script, and is reported as an error here).
    """
    if not references:
        raise ValueError("cannot score zero SQuAD examples: the reference set is empty")
    missing = [key for key in references if key not in predictions]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(references)} examples have no prediction (e.g. id {missing[0]!r})"
        )
    em = f1 = 0.0
    for key, answers in references.items():
        answers = list(answers)
        if not answers:
            raise ValueError(f"example {key!r} has no gold answer; SQuAD v1.1 needs at least one")
        em += max(exact_match_score(predictions[key], a) for a in answers)
        f1 += max(f1_score(predictions[key], a) for a in answers)
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


# ---------------------------------------------------------------------------------------------------
# Data


def find_squad_file(data_dir: str | Path) -> Path | None:
    """A SQuAD v1.1 parquet/JSON-lines file under ``data_dir`` (``squad/*.parquet`` first), or ``None``."""
    root = Path(data_dir)
    if root.is_file():
        return root
    for folder in (root / "squad", root):
        for pattern in ("train*.parquet", "*.parquet", "train*.jsonl", "*.jsonl"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def split_by_article(dataset: Any, dev_size: float | int = 0.1, seed: int = 42) -> tuple[Any, Any]:
    """Split questions into ``(train, dev)`` by article ``title``: no article is on both sides.

    Args:
        dev_size: a share of the articles in (0, 1) or a number of articles; the titles are shuffled
            with ``seed`` (same seed, same split).
    """
    titles = sorted(set(dataset["title"]))
    n = len(titles)
    count = int(round(dev_size * n)) if isinstance(dev_size, float) and dev_size < 1 else int(dev_size)
    count = max(count, 1) if isinstance(dev_size, float) and dev_size > 0 else count
    if not 0 < count < n:
        raise ValueError(f"dev_size={dev_size} gives {count} of {n} articles: need at least one on each side")
    order = np.random.default_rng(seed).permutation(n)
    dev_titles = {titles[i] for i in order[:count]}
    in_dev = [title in dev_titles for title in dataset["title"]]
    train = dataset.select([i for i, d in enumerate(in_dev) if not d])
    dev = dataset.select([i for i, d in enumerate(in_dev) if d])
    return train, dev


def load_squad(
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    *,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    dev_size: float | int = 0.1,
    seed: int = 42,
) -> Any:
    """SQuAD v1.1 as a ``DatasetDict`` with ``train`` and ``validation`` (local files first).

    With only a training file (``../shared/data/squad/train_first44articles.parquet``) the articles
    are split by :func:`split_by_article`. ``dataset`` (e.g. ``"rajpurkar/squad"``) is loaded with
    ``datasets`` when no local file is found.
    """
    import datasets

    train_path = Path(train_file) if train_file else None
    if train_path is None and data_dir is not None:
        train_path = find_squad_file(data_dir)
    if train_path is not None:
        train = _check_squad(_load_file(train_path), str(train_path))
        dev = (
            _check_squad(_load_file(Path(validation_file)), str(validation_file)) if validation_file else None
        )
    elif dataset is not None:
        try:
            loaded = datasets.load_dataset(dataset)
        except Exception as err:
            raise FileNotFoundError(
                f"could not load {dataset!r} with datasets: {err}. Offline, pass --data-dir with a local "
                "SQuAD parquet file instead."
            ) from err
        train = _check_squad(loaded["train"], f"{dataset} train")
        dev = _check_squad(loaded["validation"], f"{dataset} validation") if "validation" in loaded else None
    else:
        where = f" under {data_dir} (looked for squad/*.parquet)" if data_dir else ""
        raise FileNotFoundError(
            f"no SQuAD data{where}: pass data_dir (e.g. ../shared/data), train_file=, or "
            "dataset='rajpurkar/squad' (needs the Hub or its cache)"
        )
    if dev is None:
        train, dev = split_by_article(train, dev_size, seed)
    return datasets.DatasetDict({"train": train, "validation": dev})


def _load_file(path: Path) -> Any:
    import datasets

    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {path} does not exist")
    builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"unsupported SQuAD file {path}: use parquet or JSON lines in the Hugging Face layout"
        )
    return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data")


def _check_squad(dataset: Any, source: str) -> Any:
    missing = [c for c in _SQUAD_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source} has no column(s) {missing}; SQuAD files need {list(_SQUAD_COLUMNS)} with answers as "
            "{'text': [...], 'answer_start': [...]} (the Hugging Face layout; the nested official JSON is not read)"
        )
    return dataset


def _check_tokenizer(tokenizer: Any, max_length: int, doc_stride: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; SQuAD features need offset mappings "
            "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    if not 0 <= doc_stride < max_length:
        raise ValueError(f"doc_stride ({doc_stride}) must be in [0, max_length={max_length})")


def _encode(examples: Mapping[str, list], tokenizer: Any, max_length: int, doc_stride: int) -> Any:
    pad_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples["question"]]  # leading blanks only waste the window
    first, second = (questions, examples["context"]) if pad_right else (examples["context"], questions)
    return tokenizer(
        first,
        second,
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def prepare_train_features(
    examples: Any, tokenizer: Any, max_length: int = 384, doc_stride: int = 128, batch_size: int = 1000
) -> Any:
    """Tokenize question + context windows with ``start_positions``/``end_positions`` token labels.

    Works on a ``datasets.Dataset`` (returns one, text columns removed) of SQuAD examples. A window
    that does not contain the first gold answer entirely is labelled with the ``[CLS]`` index.
    """
    _check_tokenizer(tokenizer, max_length, doc_stride)
    context_index = 1 if tokenizer.padding_side == "right" else 0

    def fn(batch: Mapping[str, list]) -> dict:
        encoded = _encode(batch, tokenizer, max_length, doc_stride)
        sample_map = encoded.pop("overflow_to_sample_mapping")
        offsets_all = encoded.pop("offset_mapping")
        starts, ends = [], []
        for i, offsets in enumerate(offsets_all):
            input_ids = encoded["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = encoded.sequence_ids(i)
            answers = batch["answers"][sample_map[i]]
            if not answers["answer_start"]:
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context = [k for k, s in enumerate(sequence_ids) if s == context_index]
            first, last = context[0], context[-1]
            if offsets[first][0] > start_char or offsets[last][1] < end_char:
                starts.append(cls_index)
                ends.append(cls_index)
                continue
            token_start = first
            while token_start <= last and offsets[token_start][0] <= start_char:
                token_start += 1
            token_end = last
            while token_end >= first and offsets[token_end][1] >= end_char:
                token_end -= 1
            starts.append(token_start - 1)
            ends.append(token_end + 1)
        encoded["start_positions"] = starts
        encoded["end_positions"] = ends
        return dict(encoded)

    return examples.map(
        fn,
        batched=True,
        batch_size=batch_size,
        remove_columns=examples.column_names,
        desc="SQuAD train features",
    )


def prepare_eval_features(
    examples: Any, tokenizer: Any, max_length: int = 384, doc_stride: int = 128, batch_size: int = 1000
) -> Any:
    """Tokenize evaluation windows, keeping ``example_id`` and an ``offset_mapping`` for postprocessing.

    Offsets of non-context tokens are ``None``, so only context spans can become answers. Pass
    ``features.remove_columns(["example_id", "offset_mapping"])`` to the model (``Trainer`` drops them
    itself) and the full ``features`` to :func:`postprocess_predictions`.
    """
    _check_tokenizer(tokenizer, max_length, doc_stride)
    context_index = 1 if tokenizer.padding_side == "right" else 0

    def fn(batch: Mapping[str, list]) -> dict:
        encoded = _encode(batch, tokenizer, max_length, doc_stride)
        sample_map = encoded.pop("overflow_to_sample_mapping")
        encoded["example_id"] = [batch["id"][k] for k in sample_map]
        encoded["offset_mapping"] = [
            [o if s == context_index else None for o, s in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        return dict(encoded)

    return examples.map(
        fn,
        batched=True,
        batch_size=batch_size,
        remove_columns=examples.column_names,
        desc="SQuAD eval features",
    )


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Answer text per example id from the windows' start/end logits.

    For every window, the ``n_best`` highest start and end logits are paired; a pair is a candidate
    when both are context tokens, ``start <= end`` and the span has at most ``max_answer_length``
    tokens; its score is ``start_logit + end_logit``. The best candidate over all windows of an
    example gives the answer, cut from the context by character offsets (``""`` if none is valid).

    Args:
        examples: the SQuAD examples (``id``, ``context``).
        features: the output of :func:`prepare_eval_features` on ``examples`` (same order).
        start_logits, end_logits: (num_features, seq_len) arrays, one row per feature.
    """
    start_logits = np.asarray(start_logits)
    end_logits = np.asarray(end_logits)
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(
            f"got logits for {len(start_logits)}/{len(end_logits)} windows but there are {len(features)} features; "
            "pass the features the logits were computed on"
        )
    if n_best < 1 or max_answer_length < 1:
        raise ValueError("n_best and max_answer_length must be >= 1")
    by_example: dict[str, list[int]] = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        by_example[example_id].append(i)
    offsets_all = features["offset_mapping"]
    predictions: dict[str, str] = {}
    for example in _rows(examples, ("id", "context")):
        best_score, best_text = -np.inf, ""
        for i in by_example.get(example["id"], []):
            offsets = offsets_all[i]
            starts = np.argsort(start_logits[i])[::-1][:n_best]
            ends = np.argsort(end_logits[i])[::-1][:n_best]
            for s in starts:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in ends:
                    if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = start_logits[i][s] + end_logits[i][e]
                    if score > best_score:
                        best_score = score
                        best_text = example["context"][offsets[s][0] : offsets[e][1]]
        predictions[example["id"]] = best_text
    return predictions


def _rows(dataset: Any, columns: Iterable[str]) -> Iterable[dict]:
    if isinstance(dataset, (list, tuple)):
        yield from dataset
        return
    values = [dataset[c] for c in columns]
    for row in zip(*values):
        yield dict(zip(columns, row))


def evaluate_squad(
    trainer: Any,
    examples: Any,
    features: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[dict[str, float], dict[str, str]]:
    """Predict with a ``transformers.Trainer`` on ``features`` and score against ``examples``.

    Works under DDP (``Trainer.predict`` gathers every rank's windows). Returns ``(metrics,
    predictions)``: metrics ``{"exact_match", "f1"}`` (0-100) and example id -> answer text.
    """
    model_inputs = features.remove_columns(
        [c for c in ("example_id", "offset_mapping") if c in features.column_names]
    )
    output = trainer.predict(model_inputs)
    start_logits, end_logits = output.predictions[:2]
    predictions = postprocess_predictions(
        examples, features, start_logits, end_logits, n_best, max_answer_length
    )
    references = {row["id"]: list(row["answers"]["text"]) for row in _rows(examples, ("id", "answers"))}
    return squad_metrics(predictions, references), predictions
