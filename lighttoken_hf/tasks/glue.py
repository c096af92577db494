"""GLUE-style sentence(-pair) classification and regression: task table, data loading, tokenization, metrics.

Typical use (what ``examples/finetune_glue.py`` and the downstream benchmark do)::

    from lighttoken_hf.tasks import glue
    task = glue.get_task("stsb")
    data = glue.load_glue(task, data_dir="../shared/data")           # local files first
    data = glue.subsample(data, train=2000, validation=500, seed=0)  # optional budget
    encoded = glue.tokenize_glue(data, tokenizer, task, max_length=128)
    trainer = Trainer(..., compute_metrics=glue.make_compute_metrics(task))

Data sources, in order: explicit ``train_file``/``validation_file``; a local folder (``data_dir``)
holding ``train.*`` and ``dev.*``/``validation.*`` files (parquet, CSV, TSV, JSON lines) with
Hugging Face GLUE column names (``sentence`` or ``sentence1``/``sentence2``... and ``label``; a few
official GLUE names such as ``#1 String``, ``Quality``, ``is_duplicate``, ``gold_label`` and ``score``
are renamed); or a ``datasets`` name (``nyu-mll/glue`` and the task's config, e.g. ``sst2``), which
needs the Hub or its cache. When there is no dev file (STS-B in ``../shared/data``), a seeded
share of the training rows becomes the dev set (:func:`split_train_dev`).

Metrics follow GLUE and are fractions in [0, 1]: CoLA Matthews correlation; SST-2, QNLI, RTE, WNLI
and MNLI accuracy; MRPC and QQP accuracy and F1; STS-B Pearson and Spearman. ``score`` is the mean
of a task's metrics (the GLUE leaderboard's per-task number).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import accuracy, f1_binary, matthews_corrcoef, pearson, spearman

logger = logging.getLogger(__name__)

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "METRIC_FUNCTIONS",
    "find_task_files",
    "get_task",
    "glue_metrics",
    "load_glue",
    "make_compute_metrics",
    "predictions_from_logits",
    "split_train_dev",
    "subsample",
    "tokenize_glue",
]

#: Metric name -> function(predictions, references).
METRIC_FUNCTIONS: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "matthews_correlation": matthews_corrcoef,
    "pearson": pearson,
    "spearmanr": spearman,
}


@dataclass(frozen=True)
class GlueTask:
    """What a GLUE task looks like to the code.

    Attributes:
        name: short name (``"sst2"``), also the ``nyu-mll/glue`` config name.
        text_columns: one column (single sentence) or two (sentence pair), in model order.
        num_labels: classes; 1 means regression (STS-B).
        metrics: metric names (keys of :data:`METRIC_FUNCTIONS`), the first is the main one.
        local_dir: folder name of the official GLUE release (``"SST-2"``).
        label_names: class names in label-id order (used to map string labels in local files).
        validation_split: the Hub dataset's dev split.
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    local_dir: str
    label_names: tuple[str, ...] = ()
    validation_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", ("sentence",), 2, ("matthews_correlation",), "CoLA", ("unacceptable", "acceptable")),
        GlueTask("sst2", ("sentence",), 2, ("accuracy",), "SST-2", ("negative", "positive")),
        GlueTask(
            "mrpc",
            ("sentence1", "sentence2"),
            2,
            ("f1", "accuracy"),
            "MRPC",
            ("not_equivalent", "equivalent"),
        ),
        GlueTask(
            "qqp", ("question1", "question2"), 2, ("f1", "accuracy"), "QQP", ("not_duplicate", "duplicate")
        ),
        GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), "STS-B"),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            3,
            ("accuracy",),
            "MNLI",
            ("entailment", "neutral", "contradiction"),
            validation_split="validation_matched",
        ),
        GlueTask(
            "qnli", ("question", "sentence"), 2, ("accuracy",), "QNLI", ("entailment", "not_entailment")
        ),
        GlueTask(
            "rte", ("sentence1", "sentence2"), 2, ("accuracy",), "RTE", ("entailment", "not_entailment")
        ),
        GlueTask(
            "wnli", ("sentence1", "sentence2"), 2, ("accuracy",), "WNLI", ("not_entailment", "entailment")
        ),
    )
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sts": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}

#: Column names of the official GLUE files (and a few common variants) -> Hugging Face names.
_COLUMN_ALIASES = {
    "#1 String": "sentence1",
    "#2 String": "sentence2",
    "Quality": "label",
    "is_duplicate": "label",
    "gold_label": "label",
    "score": "label",
}

_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def get_task(name: str | GlueTask) -> GlueTask:
    """The :class:`GlueTask` called ``name`` (case-insensitive; ``SST-2`` and ``sst2`` both work)."""
    if isinstance(name, GlueTask):
        return name
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def find_task_files(task: str | GlueTask, data_dir: str | Path) -> tuple[Path | None, Path | None]:
    """``(train_file, dev_file)`` for ``task`` under ``data_dir`` (either may be ``None``).

    ``data_dir`` may be the data root (``<root>/glue/SST-2/train.parquet``), the ``glue`` folder or
    the task folder itself; file stems ``train`` and ``dev``/``validation`` (``dev_matched`` for
    MNLI) with any supported extension.
    """
    task = get_task(task)
    root = Path(data_dir)
    names = {task.local_dir, task.local_dir.lower(), task.name}
    folders = [root / "glue" / n for n in names] + [root / n for n in names] + [root]
    dev_stems = ("dev", "validation", "dev_matched", task.validation_split)
    for folder in folders:
        train = _first_file(folder, ("train",))
        if train is not None:
            return train, _first_file(folder, dev_stems)
    return None, None


def _first_file(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for ext in _EXTENSIONS:
            path = folder / f"{stem}{ext}"
            if path.is_file():
                return path
    return None


def _load_file(path: Path) -> Any:
    import datasets

    builder = _EXTENSIONS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"unsupported data file {path}: use one of {', '.join(_EXTENSIONS)}")
    kwargs: dict[str, Any] = {"delimiter": "\t", "quoting": 3} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **kwargs)


def _normalize_columns(dataset: Any, task: GlueTask, source: str) -> Any:
    """Rename known aliases, check the text and label columns, map string labels, cast the label dtype."""
    import datasets

    renames = {
        old: new
        for old, new in _COLUMN_ALIASES.items()
        if old in dataset.column_names and new not in dataset.column_names
    }
    if renames:
        dataset = dataset.rename_columns(renames)
    missing = [c for c in (*task.text_columns, "label") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source} has no column(s) {missing} needed for GLUE task {task.name!r} (it has "
            f"{dataset.column_names}); use Hugging Face GLUE column names: {list(task.text_columns)} and 'label'"
        )
    feature = dataset.features["label"]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        if not task.label_names:
            dataset = dataset.cast_column("label", datasets.Value("float32"))
        else:
            index = {name: i for i, name in enumerate(task.label_names)}
            unknown = sorted(set(dataset["label"]) - set(index))
            if unknown:
                raise ValueError(
                    f"{source}: labels {unknown[:5]} are not class names of {task.name!r} {list(task.label_names)}"
                )
            dataset = dataset.map(lambda row: {"label": index[row["label"]]}, desc="label names -> ids")
    target = datasets.Value("float32") if task.is_regression else datasets.Value("int64")
    if dataset.features["label"] != target:
        dataset = dataset.cast_column("label", target)
    if not task.is_regression and len(dataset):
        labels = np.asarray(dataset["label"])
        if labels.min() < 0 or labels.max() >= task.num_labels:
            raise ValueError(
                f"{source}: labels must be in 0..{task.num_labels - 1} for {task.name!r}, found "
                f"{labels.min()}..{labels.max()} (a GLUE test split without labels has -1)"
            )
    return dataset


def split_train_dev(dataset: Any, dev_size: float | int = 0.1, seed: int = 42) -> tuple[Any, Any]:
    """Split ``dataset`` into ``(train, dev)`` rows with a fixed seed (same seed, same split).

    Args:
        dev_size: a fraction in (0, 1) or a number of rows.
    """
    n = len(dataset)
    count = int(round(dev_size * n)) if isinstance(dev_size, float) and dev_size < 1 else int(dev_size)
    if not 0 < count < n:
        raise ValueError(f"dev_size={dev_size} gives {count} of {n} rows: need at least one row on each side")
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def load_glue(
    task: str | GlueTask,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    *,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    dev_size: float | int = 0.1,
    seed: int = 42,
) -> Any:
    """Load a GLUE task as a ``datasets.DatasetDict`` with ``train`` and ``validation`` splits.

    Local files are preferred (offline-safe); ``dataset`` (a Hub name such as ``"nyu-mll/glue"``, or a
    local ``datasets`` folder) is used when no local training file is found. Without a dev set, a
    seeded ``dev_size`` share of the training rows becomes ``validation`` (and leaves ``train``).

    Raises:
        FileNotFoundError: nothing to load; the message says what was looked for.
        ValueError: the files lack the task's columns or hold out-of-range labels.
    """
    import datasets

    task = get_task(task)
    train_path = Path(train_file) if train_file else None
    dev_path = Path(validation_file) if validation_file else None
    if train_path is None and data_dir is not None:
        train_path, found_dev = find_task_files(task, data_dir)
        dev_path = dev_path or found_dev
    if train_path is not None:
        if not train_path.is_file():
            raise FileNotFoundError(f"training file {train_path} does not exist")
        train = _normalize_columns(_load_file(train_path), task, str(train_path))
        dev = _normalize_columns(_load_file(dev_path), task, str(dev_path)) if dev_path else None
        source = str(train_path)
    elif dataset is not None:
        try:
            loaded = datasets.load_dataset(dataset, task.name)
        except Exception as err:
            raise FileNotFoundError(
                f"could not load {dataset!r} (config {task.name!r}) with datasets: {err}. Offline, pass "
                "--data-dir with local GLUE files instead (or run once online to fill the cache)."
            ) from err
        train = _normalize_columns(loaded["train"], task, f"{dataset}/{task.name} train")
        split = task.validation_split if task.validation_split in loaded else None
        dev = _normalize_columns(loaded[split], task, f"{dataset}/{task.name} {split}") if split else None
        source = f"{dataset}/{task.name}"
    else:
        where = f" under {data_dir} (looked for glue/{task.local_dir}/train.*)" if data_dir else ""
        raise FileNotFoundError(
            f"no data for GLUE task {task.name!r}{where}: pass data_dir with train.parquet/csv/tsv files "
            "(e.g. ../shared/data), train_file=, or dataset='nyu-mll/glue' (needs the Hub or its cache)"
        )
    if dev is None:
        train, dev = split_train_dev(train, dev_size, seed)
        logger.info(
            "%s: no dev set, held out %d training rows (seed %d) as validation", source, len(dev), seed
        )
    return datasets.DatasetDict({"train": train, "validation": dev})


def subsample(data: Any, seed: int = 0, **sizes: int | None) -> Any:
    """Seeded random subsets of the splits of a ``DatasetDict`` (``subsample(d, train=512, validation=256)``).

    A size of ``None`` (or at least the split's length) keeps the split whole.
    """
    import datasets

    out = dict(data)
    for split, size in sizes.items():
        if split not in data:
            raise KeyError(f"no split {split!r}; splits: {list(data)}")
        if size is not None and size < 1:
            raise ValueError(f"subset size for {split!r} must be >= 1, got {size}")
        if size is not None and size < len(data[split]):
            out[split] = data[split].shuffle(seed=seed).select(range(size))
    return datasets.DatasetDict(out)


def tokenize_glue(
    data: Any,
    tokenizer: Any,
    task: str | GlueTask,
    max_length: int = 128,
    padding: bool | str = False,
) -> Any:
    """Tokenize one or two text columns (truncated to ``max_length``) and add ``labels``.

    Every other column is dropped, so the result feeds ``Trainer`` with
    ``DataCollatorWithPadding`` directly. Works on a ``Dataset`` or a ``DatasetDict``.
    """
    task = get_task(task)

    def encode(batch: Mapping[str, list]) -> dict:
        encoded = tokenizer(
            *(batch[c] for c in task.text_columns), truncation=True, max_length=max_length, padding=padding
        )
        encoded["labels"] = batch["label"]
        return dict(encoded)

    columns = data.column_names
    remove = next(iter(columns.values())) if isinstance(columns, dict) else columns
    return data.map(encode, batched=True, remove_columns=remove, desc=f"tokenizing {task.name}")


def predictions_from_logits(task: str | GlueTask, logits: Any) -> np.ndarray:
    """Class ids (argmax) for classification, the scalar output for regression."""
    task = get_task(task)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = np.asarray(logits)
    if task.is_regression:
        return logits.reshape(len(logits), -1)[:, 0].astype(np.float64)
    return logits.argmax(axis=-1)


def glue_metrics(task: str | GlueTask, predictions: Any, references: Any) -> dict[str, float]:
    """The task's official metrics plus ``score`` (their mean), all fractions in [0, 1]."""
    task = get_task(task)
    out = {name: METRIC_FUNCTIONS[name](predictions, references) for name in task.metrics}
    out["score"] = float(np.mean(list(out.values())))
    return out


def make_compute_metrics(task: str | GlueTask) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer``: logits -> :func:`glue_metrics`."""
    task = get_task(task)

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        predictions = predictions_from_logits(task, eval_prediction.predictions)
        labels = eval_prediction.label_ids
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        return glue_metrics(task, predictions, np.asarray(labels).reshape(-1))

    return compute_metrics
