"""Units of lighttoken_hf.tasks: metrics against scikit-learn/scipy, SQuAD scoring and postprocessing,
data loading and splits, and loading compressed checkpoints with a task head's Auto class."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch

from lighttoken_hf.tasks import distributed, glue, metrics, squad
from lighttoken_hf.tasks.models import is_lighttoken_checkpoint, load_model_for_task, lora_target_modules

DATA = Path(
    os.environ.get("LIGHTTOKEN_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
NO_DATA = (
    f"needs real GLUE/SQuAD parquet files under {DATA}: set LIGHTTOKEN_DATA_DIR to a folder holding "
    "glue/<TASK>/train.parquet (+ dev.parquet) for SST-2 and STS-B, and squad/<any>.parquet (SQuAD v1.1, "
    "Hugging Face columns)"
)


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    ref = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.7, ref, 1 - ref)
    assert metrics.accuracy(pred, ref) == pytest.approx(sklearn.metrics.accuracy_score(ref, pred))
    assert metrics.f1_binary(pred, ref) == pytest.approx(sklearn.metrics.f1_score(ref, pred))
    assert metrics.matthews_corrcoef(pred, ref) == pytest.approx(sklearn.metrics.matthews_corrcoef(ref, pred))
    ref3, pred3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert metrics.matthews_corrcoef(pred3, ref3) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(ref3, pred3)
    )


def test_degenerate_classification_metrics_follow_sklearn():
    ref = np.array([0, 1, 1, 0, 1])
    constant = np.ones(5, dtype=int)
    assert metrics.matthews_corrcoef(constant, ref) == sklearn.metrics.matthews_corrcoef(ref, constant) == 0.0
    no_positive = np.zeros(5, dtype=int)
    assert metrics.f1_binary(no_positive, np.zeros(5, dtype=int)) == 0.0
    assert metrics.f1_binary(ref, ref) == 1.0
    with pytest.raises(ValueError, match="same length"):
        metrics.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="zero examples"):
        metrics.accuracy([], [])


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, 5, 80).round(1)  # rounded: ties, which Spearman must average
    pred = ref + rng.normal(0, 1.5, 80)
    assert metrics.pearson(pred, ref) == pytest.approx(scipy.stats.pearsonr(pred, ref)[0])
    assert metrics.spearman(pred.round(0), ref) == pytest.approx(scipy.stats.spearmanr(pred.round(0), ref)[0])


def test_zero_shot_sts_is_the_spearman_of_embedding_cosines(tiny_bert, tiny_tokenizer):
    from lighttoken_hf.compressor.metrics import mean_pooled_embeddings
    from lighttoken_hf.fidelity import builtin_sentences, sts_spearman

    texts = builtin_sentences()[:16]
    first, second, gold = texts[:8], texts[8:], np.linspace(0, 5, 8)
    a, b = (mean_pooled_embeddings(tiny_bert, tiny_tokenizer, t) for t in (first, second))
    cosines = torch.nn.functional.cosine_similarity(a, b)
    expected = scipy.stats.spearmanr(cosines.numpy(), gold)[0]
    assert sts_spearman(tiny_bert, tiny_tokenizer, first, second, gold) == pytest.approx(expected)
    assert sts_spearman(tiny_bert, tiny_tokenizer, first, second, torch.tensor(gold)) == pytest.approx(expected)


def test_glue_metrics_per_task_and_compute_metrics():
    from transformers import EvalPrediction

    ref = np.array([1, 0, 1, 1, 0, 0])
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    pred = logits.argmax(-1)
    out = glue.make_compute_metrics("mrpc")(EvalPrediction(predictions=logits, label_ids=ref))
    assert set(out) == {"f1", "accuracy", "score"}
    assert out["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(ref, pred))
    assert out["f1"] == pytest.approx(sklearn.metrics.f1_score(ref, pred))
    assert out["score"] == pytest.approx((out["f1"] + out["accuracy"]) / 2)
    cola = glue.make_compute_metrics("CoLA")(EvalPrediction(predictions=logits, label_ids=ref))
    assert cola["matthews_correlation"] == pytest.approx(sklearn.metrics.matthews_corrcoef(ref, pred))
    scores = np.array([0.5, 4.0, 2.5, 3.0])
    outputs = np.array([[1.0], [3.5], [2.0], [3.6]])
    stsb = glue.make_compute_metrics("sts-b")(EvalPrediction(predictions=outputs, label_ids=scores))
    assert stsb["pearson"] == pytest.approx(scipy.stats.pearsonr(outputs[:, 0], scores)[0])
    assert stsb["spearmanr"] == pytest.approx(scipy.stats.spearmanr(outputs[:, 0], scores)[0])
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue.get_task("glue-xyz")


# ------------------------------------------------------------------------------------------ SQuAD metric


def test_squad_normalization_and_scores_by_hand():
    assert squad.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert squad.normalize_answer("an apple a day") == "apple day"
    assert squad.exact_match_score("the Cat.", "cat") == 1.0
    assert squad.exact_match_score("cats", "cat") == 0.0
    # pred tokens {big, red, dog}, gold {red, dog, house}: 2 common -> P = R = 2/3 -> F1 = 2/3
    assert squad.f1_score("the big red dog", "red dog house") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: pred {a1, a1, b}, gold {a1, b}: P = 2/3, R = 1 -> F1 = 0.8
    assert squad.f1_score("a1 a1 b", "a1 b") == pytest.approx(0.8)
    assert squad.f1_score("nothing", "else") == 0.0
    assert squad.f1_score("the", "an") == 0.0  # both normalize to no tokens


def test_squad_metrics_take_the_best_gold_answer():
    predictions = {"q1": "Denver Broncos", "q2": "in 1858", "q3": "wrong"}
    references = {
        "q1": ["Denver Broncos", "The Broncos"],  # EM 1, F1 1
        "q2": ["1858", "the year 1858"],  # EM 0; F1 max(2/3, 2/3... ) -> vs "1858": P 1/2 R 1 -> 2/3
        "q3": ["right"],  # 0, 0
    }
    out = squad.squad_metrics(predictions, references)
    assert out["exact_match"] == pytest.approx(100 / 3)
    f1_q2 = max(squad.f1_score("in 1858", "1858"), squad.f1_score("in 1858", "the year 1858"))
    assert f1_q2 == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="no prediction"):
        squad.squad_metrics({}, {"q1": ["x"]})


# ------------------------------------------------------------------------------------------ SQuAD features


def _squad_examples():
    import datasets

    words = ["the", "man", "said", "that", "the", "house", "was", "old", "and", "the", "water", "was", "low"]
    filler = " ".join(words * 4)
    context = f"{filler} the boy came home after work . {filler}"
    answer = "came home after work"
    start = context.index(answer)
    return datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "title": ["t1", "t2"],
            "context": [context, "she said the water was low ."],
            "question": ["what did the boy do ?", "what was low ?"],
            "answers": [
                {"text": [answer], "answer_start": [start]},
                {"text": ["the water"], "answer_start": [9]},
            ],
        }
    )


def test_train_features_label_the_answer_tokens(tiny_tokenizer):
    examples = _squad_examples()
    features = squad.prepare_train_features(examples, tiny_tokenizer, max_length=48, doc_stride=16)
    assert len(features) > len(examples)  # the long context was cut into overlapping windows
    answers = {"a": "came home after work", "b": "the water"}
    eval_features = squad.prepare_eval_features(examples, tiny_tokenizer, max_length=48, doc_stride=16)
    assert len(eval_features) == len(features)
    found = {"a": 0, "b": 0}
    for feature, info in zip(features, eval_features):
        s, e = feature["start_positions"], feature["end_positions"]
        if s == 0 and e == 0:  # [CLS]: the answer is not (entirely) in this window
            continue
        offsets = info["offset_mapping"]
        context = examples[["a", "b"].index(info["example_id"])]["context"]
        assert context[offsets[s][0] : offsets[e][1]] == answers[info["example_id"]]
        found[info["example_id"]] += 1
    assert found["a"] >= 1 and found["b"] == 1
    assert any(f["start_positions"] == 0 for f in features)  # some window of "a" lacks the answer


def test_postprocess_recovers_the_answer_and_respects_max_length(tiny_tokenizer):
    examples = _squad_examples()
    features = squad.prepare_eval_features(examples, tiny_tokenizer, max_length=48, doc_stride=16)
    seq = len(features[0]["input_ids"])
    start = np.full((len(features), seq), -10.0)
    end = np.full((len(features), seq), -10.0)
    contexts = {row["id"]: row["context"] for row in examples}
    targets = {"a": "came home after work", "b": "the water"}
    for i, feature in enumerate(features):
        text = targets[feature["example_id"]]
        begin = contexts[feature["example_id"]].index(text)
        offsets = feature["offset_mapping"]
        tokens = [
            k for k, o in enumerate(offsets) if o is not None and begin <= o[0] and o[1] <= begin + len(text)
        ]
        if tokens and offsets[tokens[0]][0] == begin and offsets[tokens[-1]][1] == begin + len(text):
            start[i, tokens[0]] = 5.0
            end[i, tokens[-1]] = 5.0
        start[i, 0] = end[i, 0] = 20.0  # [CLS] scores highest but is never an answer
    predictions = squad.postprocess_predictions(examples, features, start, end)
    assert predictions == targets
    # "came home after work" spans 4 tokens: with at most 2 it must lose to a shorter span
    short = squad.postprocess_predictions(examples, features, start, end, max_answer_length=2)
    assert short["a"] != targets["a"] and short["b"] == "the water"
    with pytest.raises(ValueError, match="features"):
        squad.postprocess_predictions(examples, features, start[:1], end[:1])


def test_split_by_article_is_disjoint_and_seeded():
    import datasets

    titles = [f"article{i % 9}" for i in range(90)]
    data = datasets.Dataset.from_dict({"title": titles, "id": [str(i) for i in range(90)]})
    train, dev = squad.split_by_article(data, dev_size=0.25, seed=3)
    assert len(train) + len(dev) == 90
    assert not set(train["title"]) & set(dev["title"])
    assert len(set(dev["title"])) == 2  # round(0.25 * 9)
    again = squad.split_by_article(data, dev_size=0.25, seed=3)[1]
    assert dev["id"] == again["id"]
    others = {tuple(sorted(set(squad.split_by_article(data, 0.25, seed=s)[1]["title"]))) for s in range(6)}
    assert len(others) > 1
    with pytest.raises(ValueError, match="articles"):
        squad.split_by_article(data, dev_size=9)


@pytest.mark.skipif(not (DATA / "squad").is_dir(), reason=NO_DATA)
def test_load_real_squad_split_by_article():
    data = squad.load_squad(DATA, dev_size=4, seed=0)
    assert not set(data["train"]["title"]) & set(data["validation"]["title"])
    assert len(set(data["validation"]["title"])) == 4
    assert len(data["train"]) + len(data["validation"]) == 11877


# ------------------------------------------------------------------------------------------ GLUE data


def test_load_glue_local_csv_tsv_and_errors(tmp_path):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    rows = [
        ("A man sleeps.", "Someone sleeps.", "entailment"),
        ("It rains.", "It is dry.", "not_entailment"),
    ] * 5
    with open(folder / "train.tsv", "w", encoding="utf-8") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for i, (a, b, label) in enumerate(rows):
            f.write(f"{i}\t{a}\t{b}\t{label}\n")
    with open(folder / "dev.csv", "w", encoding="utf-8") as f:
        f.write("sentence1,sentence2,label\nA dog.,An animal.,0\nA cat.,A car.,1\n")
    data = glue.load_glue("rte", tmp_path)
    assert len(data["train"]) == 10 and len(data["validation"]) == 2
    assert data["train"]["label"] == [0, 1] * 5
    # a single-sentence task's file without its column is a clear error
    (tmp_path / "glue" / "SST-2").mkdir()
    (tmp_path / "glue" / "SST-2" / "train.csv").write_text("text,label\nfine,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="sentence"):
        glue.load_glue("sst2", tmp_path)
    with pytest.raises(FileNotFoundError, match="no data for GLUE task 'cola'"):
        glue.load_glue("cola", tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text("sentence,label\nx,7\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        glue.load_glue("sst2", bad)


@pytest.mark.skipif(not (DATA / "glue" / "STS-B").is_dir(), reason=NO_DATA)
def test_stsb_without_dev_file_is_split_with_a_fixed_seed(tiny_tokenizer):
    a = glue.load_glue("stsb", DATA, dev_size=500, seed=1)
    b = glue.load_glue("stsb", DATA, dev_size=500, seed=1)
    assert len(a["validation"]) == 500 and len(a["train"]) == 5749 - 500
    assert a["validation"]["idx"] == b["validation"]["idx"]
    assert not set(a["validation"]["idx"]) & set(a["train"]["idx"])
    assert a["train"].features["label"].dtype == "float32"
    small = glue.subsample(a, train=20, validation=10, seed=0)
    encoded = glue.tokenize_glue(small, tiny_tokenizer, "stsb", max_length=32)
    assert set(encoded["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    first = encoded["train"][0]
    assert len(first["input_ids"]) <= 32 and set(first["token_type_ids"]) == {0, 1}  # a sentence pair


# ------------------------------------------------------------------------------------------ models


@pytest.fixture
def compressed_base_dir(tmp_path, tiny_bert, tiny_tokenizer, single_thread):
    import lighttoken_hf

    model = lighttoken_hf.compress(
        tiny_bert, ratio=4, tokenizer=tiny_tokenizer, progress=False, schedule={"max_epochs": 2}
    )
    out = tmp_path / "base"
    model.save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out, model


def test_head_auto_class_loads_a_base_checkpoint_with_a_fresh_head(compressed_base_dir, id_batch):
    from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    path, base = compressed_base_dir
    cls, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3, output_loading_info=True
    )
    assert type(cls).__name__ == "LightTokenForSequenceClassification"
    assert info["missing_keys"] == {"backbone.classifier.weight", "backbone.classifier.bias"}
    assert cls.config.num_labels == cls.config.backbone.num_labels == 3
    assert cls(**id_batch).logits.shape == (3, 3)
    ids = id_batch["input_ids"]
    assert torch.equal(cls.get_input_embeddings()(ids), base.get_input_embeddings()(ids))
    with torch.no_grad():
        hidden = cls.backbone.bert(**id_batch).last_hidden_state
        assert torch.allclose(hidden, base(**id_batch).last_hidden_state, atol=1e-6)

    qa, info = AutoModelForQuestionAnswering.from_pretrained(path, output_loading_info=True)
    assert info["missing_keys"] == {"backbone.qa_outputs.weight", "backbone.qa_outputs.bias"}

    # the fine-tuned head checkpoint keeps its own layout, reloads equal, and loads as a base model too
    cls.save_pretrained(path.parent / "cls")
    from safetensors import safe_open

    with safe_open(str(path.parent / "cls" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "backbone.classifier.weight" in keys and any(k.startswith("backbone.bert.") for k in keys)
    again = AutoModelForSequenceClassification.from_pretrained(path.parent / "cls")
    assert torch.equal(again(**id_batch).logits, cls(**id_batch).logits)
    back, info = AutoModel.from_pretrained(path.parent / "cls", output_loading_info=True)
    assert info["missing_keys"] == set()
    with torch.no_grad():
        assert torch.allclose(back(**id_batch).last_hidden_state, hidden, atol=1e-6)


def test_load_model_for_task_compresses_a_dense_head_on_the_fly(
    tmp_path, tiny_bert, tiny_tokenizer, single_thread
):
    tiny_bert.save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    model, tok = load_model_for_task(
        tmp_path / "dense",
        "sequence-classification",
        num_labels=1,
        compress_ratio=4,
        compress_options={"schedule": {"max_epochs": 2}},
        progress=False,
    )
    assert type(model).__name__ == "LightTokenForSequenceClassification"
    assert model.config.backbone.num_labels == 1 and model.compression_report.ratio >= 4
    assert len(tok) == 200
    dense, _ = load_model_for_task(tmp_path / "dense", "question-answering")
    assert type(dense).__name__ == "BertForQuestionAnswering" and not is_lighttoken_checkpoint(
        tmp_path / "dense"
    )
    model.save_pretrained(tmp_path / "compressed")
    tiny_tokenizer.save_pretrained(tmp_path / "compressed")
    assert is_lighttoken_checkpoint(tmp_path / "compressed")
    with pytest.raises(ValueError, match="already LightToken-compressed"):
        load_model_for_task(tmp_path / "compressed", compress_ratio=25)
    labelled, _ = load_model_for_task(
        tmp_path / "compressed", id2label={0: "neg", 1: "pos"}, ignore_mismatched_sizes=True
    )
    assert labelled.config.backbone.id2label == {0: "neg", 1: "pos"}
    assert labelled.backbone.classifier.out_features == 2
    assert lora_target_modules(labelled) == ["query", "value"]
    with pytest.raises(ValueError, match="unknown task"):
        load_model_for_task(tmp_path / "dense", "summarization")


def test_parameter_digest_and_write_json(tmp_path, tiny_bert):
    import copy

    twin = copy.deepcopy(tiny_bert)
    assert distributed.parameter_digest(twin) == distributed.parameter_digest(tiny_bert)
    with torch.no_grad():
        twin.pooler.dense.bias[0] += 1e-6
    changed = {
        k
        for k, v in distributed.parameter_digest(twin).items()
        if v != distributed.parameter_digest(tiny_bert)[k]
    }
    assert changed == {"pooler.dense.bias"}
    path = distributed.write_json(tmp_path / "sub" / "m.json", {"a": 1.5})
    assert json.loads(path.read_text()) == {"a": 1.5}
