"""Pure helpers of benchmarks/downstream_benchmark.py and benchmarks/update_readme.py (no training here)."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import pytest
from conftest import load_benchmark

ds = load_benchmark("downstream_benchmark")
update_readme = load_benchmark("update_readme")

TASKS = ["sst2", "rte", "squad"]


def _run(method: str, task: str, seed: int, score: float | None, em: float | None = None) -> dict:
    metrics = {"eval_exact_match": em} if em is not None else {}
    return {
        "method": method,
        "task": task,
        "seed": seed,
        "score": score,
        "metrics": metrics,
        "wall_seconds": 10.0,
    }


def _runs() -> list[dict]:
    return [
        _run("original", "sst2", 0, 80.0),
        _run("original", "rte", 0, 60.0),
        _run("original", "rte", 1, 64.0),
        _run("original", "squad", 0, 40.0, em=30.0),
        _run("lighttoken-25x", "sst2", 0, 79.0),
        _run("lighttoken-25x", "rte", 0, 61.0),
        _run("lighttoken-25x", "rte", 1, 59.0),
        _run("lighttoken-25x", "squad", 0, 38.0, em=27.0),
        _run("pq-25x", "sst2", 0, 75.0),
        _run("pq-25x", "rte", 0, None),  # a failed run
    ]


def test_mean_std_uses_sample_std_and_ignores_missing_values():
    out = ds.mean_std([1.0, None, 2.0, float("nan"), 4.0])
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(statistics.fmean([1.0, 2.0, 4.0]))
    assert out["std"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    assert ds.mean_std([5.0]) == {"mean": 5.0, "std": None, "n": 1}
    assert ds.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_main_score_scales_glue_fractions_and_keeps_squad_f1():
    assert ds.main_score("sst2", {"eval_accuracy": 0.875}) == pytest.approx(87.5)
    assert ds.main_score("cola", {"eval_matthews_correlation": 0.3}) == pytest.approx(30.0)
    assert ds.main_score(
        "stsb", {"eval_pearson": 0.8, "eval_spearmanr": 0.6, "eval_score": 0.7}
    ) == pytest.approx(70)
    assert ds.main_score("squad", {"eval_f1": 55.5, "eval_exact_match": 40.0}) == pytest.approx(55.5)
    assert ds.main_score("rte", {}) is None
    with pytest.raises(ValueError, match="unknown task"):
        ds.main_score("mnli", {"eval_accuracy": 0.5})


def test_aggregate_means_over_seeds_average_over_tasks_and_deltas():
    summary = ds.aggregate(_runs(), ["original", "lighttoken-25x", "pq-25x"], TASKS)
    original, lt = summary["original"], summary["lighttoken-25x"]
    assert original["tasks"]["rte"]["mean"] == pytest.approx(62.0)
    assert original["tasks"]["rte"]["std"] == pytest.approx(statistics.stdev([60.0, 64.0]))
    assert original["tasks"]["rte"]["seeds"] == [0, 1]
    assert original["tasks"]["squad"]["exact_match"]["mean"] == pytest.approx(30.0)
    assert original["average"] == pytest.approx((80 + 62 + 40) / 3)
    assert lt["average"] == pytest.approx((79 + 60 + 38) / 3)
    assert lt["delta_average"] == pytest.approx(lt["average"] - original["average"])
    assert lt["deltas"]["sst2"] == pytest.approx(-1.0)
    # PQ has no RTE/SQuAD result: its average covers SST-2 only and is flagged, no delta of the average.
    pq = summary["pq-25x"]
    assert pq["average"] == pytest.approx(75.0)
    assert pq["average_complete"] is False
    assert pq["delta_average"] is None
    assert pq["deltas"]["rte"] is None


def test_check_targets_reports_met_missed_and_unknown():
    runs = _runs()
    summary = ds.aggregate(runs, ["original", "lighttoken-25x", "lighttoken-100x", "svd-25x"], TASKS)
    targets = {t["target"]: t for t in ds.check_targets(summary)}
    lt25 = next(t for name, t in targets.items() if name.startswith("LightToken 25x within"))
    delta = summary["lighttoken-25x"]["average"] - summary["original"]["average"]
    assert lt25["value"] == pytest.approx(delta)
    assert lt25["met"] is (delta >= -1.0)
    lt100 = next(t for name, t in targets.items() if name.startswith("LightToken 100x"))
    assert lt100["met"] is None and lt100["value"] is None  # never run
    svd = next(t for name, t in targets.items() if "SVD" in name)
    assert svd["met"] is None


def test_formatting_helpers():
    assert ds.fmt_mean_std({"mean": 85.26, "std": 1.234, "n": 3}) == "85.3 ± 1.2"
    assert ds.fmt_mean_std({"mean": 85.26, "std": None, "n": 1}) == "85.3"
    assert ds.fmt_mean_std({"mean": None, "std": None, "n": 0}) == "–"
    assert ds.fmt_signed(-0.001) == "+0.00"
    assert ds.fmt_signed(-1.256) == "-1.26"
    assert ds.fmt_signed(None) == "–"


def test_build_plan_runs_first_seeds_first_and_references_last():
    methods = ["original", "lighttoken-25x", "original-emb-trained"]
    seeds = {"sst2": [0], "rte": [0, 1, 2], "cola": [0, 1]}
    plan = ds.build_plan(["sst2", "rte", "cola"], methods, seeds)
    assert [(g.task, g.seed, g.optional) for g in plan] == [
        ("sst2", 0, False),
        ("rte", 0, False),
        ("cola", 0, False),
        ("rte", 1, True),  # later rounds in LATER_SEED_ORDER
        ("cola", 1, True),
        ("rte", 2, True),
        ("sst2", 0, True),  # the reference method, once per task
        ("rte", 0, True),
        ("cola", 0, True),
    ]
    assert all(g.methods == ("original", "lighttoken-25x") for g in plan[:6])
    assert all(g.methods == ("original-emb-trained",) for g in plan[6:])
    runs = [_run("original", "rte", 0, 1.0) | {"wall_seconds": 30.0}, _run("original", "cola", 0, 1.0)]
    assert ds.estimate_seconds(plan[3], runs) == pytest.approx(60.0)  # 2 methods x 30 s
    assert ds.estimate_seconds(plan[0], runs) is None


def test_apply_overrides_changes_only_the_named_fields():
    out = ds.apply_overrides(
        ds.BUDGETS, ["squad.train_examples=all", "cola.epochs=5", "squad.max_length=384"]
    )
    assert out["squad"].train_examples is None
    assert out["cola"].epochs == 5.0 and isinstance(out["cola"].epochs, float)
    assert out["squad"].max_length == 384
    assert out["sst2"] == ds.BUDGETS["sst2"]
    assert ds.BUDGETS["squad"].train_examples is not None  # the defaults are untouched
    for bad, message in [
        ("rte.train_examples", "TASK.FIELD=VALUE"),
        ("mnli.epochs=2", "unknown task"),
        ("rte.speed=2", "unknown field"),
        ("rte.batch_size=big", "not a valid int"),
    ]:
        with pytest.raises(ValueError, match=message):
            ds.apply_overrides(ds.BUDGETS, [bad])


def _payload() -> dict:
    methods = ["original", "lighttoken-25x", "pq-25x"]
    summary = ds.aggregate(_runs(), methods, TASKS)
    budgets = {t: asdict(ds.BUDGETS[t]) for t in TASKS}
    return {
        "model": {"label": "all-MiniLM-L6-v2"},
        "date": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "abc", "dirty": False},
        "args": {"threads": 1, "quick": False},
        "machine": {"cpu_model": "CPU", "cpus_available": 2, "load_average_at_start": [1.0]},
        "wall_seconds": 600.0,
        "embedding_policy_note": "frozen everywhere",
        "tasks": TASKS,
        "methods": methods,
        "summary": summary,
        "methods_info": {
            "original": {"real_ratio": 1.0, "embedding_bytes": 1024 * 100},
            "lighttoken-25x": {"real_ratio": 25.0, "embedding_bytes": 1024 * 4},
            "pq-25x": {"real_ratio": 25.2, "embedding_bytes": 1024 * 4},
        },
        "budgets": budgets,
        "seeds_per_task": {"sst2": [0], "rte": [0, 1], "squad": [0]},
        "data_sizes": {"squad": {"train": 250, "validation": 200, "train_windows": 270}},
        "targets": ds.check_targets(summary),
        "train_seconds": {"original": 120.0},
        "skipped_for_time": [{"task": "rte", "seed": 2, "methods": ["original"]}],
        "time_budget_minutes": 50.0,
        "runs": _runs() + [{"method": "pq-25x", "task": "squad", "seed": 0, "error": "RuntimeError: boom"}],
    }


def test_markdown_report_has_one_row_per_method_and_the_budget():
    md = ds.markdown_report(_payload())
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    labels = [ds.METHODS[m].label for m in ("original", "lighttoken-25x", "pq-25x")]
    for label in labels:
        assert sum(line.startswith(f"| {label} |") for line in rows) == 1
    lt_row = next(line for line in rows if line.startswith("| LightToken 25x |"))
    assert "60.0 ± 1.4" in lt_row  # RTE: mean and sample std of 61 and 59
    assert "27.0 / 38.0" in lt_row  # SQuAD EM / F1
    assert "(partial)" in next(line for line in rows if line.startswith("| PQ 25x |"))
    assert "| SQuAD v1.1 | F1 | 250 q (270 windows) | 200 q | 256 (stride 64) |" in md
    assert "RuntimeError: boom" in md
    assert "RTE seed 2: original (embedding frozen)" in md
    assert "frozen everywhere" in md


def test_update_readme_renders_every_block_from_its_result_file():
    content = "intro\n" + "".join(
        f"<!-- RESULTS:{name} -->\nold {name}\n<!-- /RESULTS:{name} -->\nbetween\n" for name in update_readme.BLOCKS
    )
    out = update_readme.updated(content)
    assert out.startswith("intro\n") and "old " not in out
    assert out.count("between\n") == len(update_readme.BLOCKS)
    minilm = update_readme.render_block("minilm")
    assert "| 25x | **" in minilm and "fidelity_minilm_int8_joined.json" in minilm
    assert "/work" not in out and "commit" not in out  # no machine paths or commit hashes in the README
    with pytest.raises(ValueError, match="has no block"):
        update_readme.updated("no blocks")
    placed = [name for names in update_readme.DOCUMENTS.values() for name in names]
    assert sorted(placed) == sorted(update_readme.BLOCKS)  # every block in exactly one document


def test_readme_results_are_those_of_the_result_files():
    assert update_readme.main(["--check"]) == 0, "run python benchmarks/update_readme.py"


def _shard(tasks: list[str], date: str) -> dict:
    payload = _payload()
    runs = [r for r in _runs() if r["task"] in tasks]
    payload.update(
        benchmark="downstream",
        date=date,
        tasks=tasks,
        budgets={t: asdict(ds.BUDGETS[t]) for t in tasks},
        seeds_per_task={t: payload["seeds_per_task"][t] for t in tasks},
        runs=runs,
        summary=ds.aggregate(runs, payload["methods"], tasks),
        skipped_for_time=[g for g in payload["skipped_for_time"] if g["task"] in tasks],
        wall_seconds=100.0 * len(tasks),
    )
    return payload


def test_merge_payloads_equals_one_run_of_all_tasks():
    merged = ds.merge_payloads(
        [_shard(["rte"], "2026-01-01T02:00:00+00:00"), _shard(["squad", "sst2"], "2026-01-01T01:59:00+00:00")]
    )
    assert merged["tasks"] == TASKS  # the benchmark's task order, not the shards'
    assert merged["summary"] == ds.aggregate(_runs(), merged["methods"], TASKS)
    assert merged["targets"] == ds.check_targets(merged["summary"])
    # from the first start (01:59:00 - 200 s) to the last end (02:00:00): overlapping shards count once
    assert merged["wall_seconds"] == pytest.approx(260.0)
    assert merged["date"] == "2026-01-01T02:00:00+00:00"
    assert merged["skipped_for_time"] == [{"task": "rte", "seed": 2, "methods": ["original"]}]
    assert "over 2 shards" in ds.markdown_report(merged)
    # a task may be split over shards by seed (same budget): its seeds are joined
    rte_seed0 = _shard(["rte"], "2026-01-01T00:00:00+00:00")
    rte_seed1 = _shard(["rte"], "2026-01-01T00:10:00+00:00")
    rte_seed0["runs"] = [r for r in rte_seed0["runs"] if r["seed"] == 0]
    rte_seed1["runs"] = [r for r in rte_seed1["runs"] if r["seed"] == 1]
    rte_seed0["seeds_per_task"], rte_seed1["seeds_per_task"] = {"rte": [0]}, {"rte": [1]}
    joined = ds.merge_payloads([rte_seed1, rte_seed0])
    assert joined["wall_seconds"] == pytest.approx(700.0)  # 23:58:20 to 00:10:00
    assert joined["seeds_per_task"] == {"rte": [0, 1]}
    assert joined["summary"]["lighttoken-25x"]["tasks"]["rte"]["n"] == 2


def test_merge_payloads_rejects_shards_that_do_not_fit():
    rte, sst2 = _shard(["rte"], "d1"), _shard(["sst2"], "d2")
    with pytest.raises(ValueError, match="at least two"):
        ds.merge_payloads([rte])
    with pytest.raises(ValueError, match="more than one merged file"):
        ds.merge_payloads([rte, _shard(["rte"], "d2")])
    other = _shard(["rte", "sst2"], "d2")
    other["budgets"]["rte"]["epochs"] += 1.0
    other["runs"] = [r for r in other["runs"] if r["task"] == "sst2"]
    with pytest.raises(ValueError, match="different budgets"):
        ds.merge_payloads([rte, other])
    rte = _shard(["rte"], "2026-01-01T01:00:00+00:00")
    planned_more = _shard(["sst2"], "2026-01-01T02:00:00+00:00")
    planned_more["budgets"]["sst2"]["seeds"] += 2  # planning more seeds changes no run: still mergeable
    merged = ds.merge_payloads([rte, planned_more])
    assert merged["budgets"]["sst2"]["seeds"] == planned_more["budgets"]["sst2"]["seeds"]
    sst2["methods_info"]["lighttoken-25x"] = {"real_ratio": 24.0, "embedding_bytes": 1}
    with pytest.raises(ValueError, match="different compressed matrices"):
        ds.merge_payloads([rte, sst2])


def test_merge_replace_lets_a_later_matrix_supersede_an_earlier_one():
    old = _shard(["rte", "sst2"], "2026-01-01T01:00:00+00:00")
    new = _shard(["rte", "sst2"], "2026-01-01T02:00:00+00:00")
    new["methods_info"] = {"lighttoken-25x": {"real_ratio": 25.5, "embedding_bytes": 7}}
    new["runs"] = [dict(r, score=r["score"] + 1.0) for r in new["runs"] if r["method"] == "lighttoken-25x"]
    with pytest.raises(ValueError, match="--replace"):
        ds.merge_payloads([old, new])
    merged = ds.merge_payloads([old, new], replace=True)
    assert merged["replaced_methods"] == ["lighttoken-25x"]
    assert merged["methods_info"]["lighttoken-25x"]["real_ratio"] == 25.5
    lt_runs = [r for r in merged["runs"] if r["method"] == "lighttoken-25x"]
    assert lt_runs == new["runs"]  # only the later file's runs of the replaced method remain
    others = [r for r in merged["runs"] if r["method"] != "lighttoken-25x"]
    assert others == [r for r in old["runs"] if r["method"] != "lighttoken-25x"]


def test_cache_key_follows_the_lighttoken_defaults(monkeypatch):
    import dataclasses

    from lighttoken_hf.compressor import settings

    method = ds.METHODS["lighttoken-25x"]
    before = ds._cache_key("model", method)
    assert before == ds._cache_key("model", method)

    @dataclasses.dataclass
    class ChangedDefaults(settings.CompressionSettings):
        sensitivity_shrinkage: float = 0.5

    monkeypatch.setattr(settings, "CompressionSettings", ChangedDefaults)
    assert ds._cache_key("model", method) != before  # a cached matrix of the old defaults is not reused
    assert ds._cache_key("model", ds.METHODS["pq-25x"]) == ds._cache_key("model", ds.METHODS["pq-25x"])
