"""fidelity_benchmark.py --join: rows of runs on the same evaluation data become one table, naming each run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import load_benchmark

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
fb = load_benchmark("fidelity_benchmark")


def _payload(method: str, targets: list[float], value: float) -> dict:
    """A run in the benchmark's own JSON format, built from a committed result of the same shape."""
    payload = json.loads((RESULTS / "fidelity_minilm_int8.json").read_text())
    template = payload["results"][0]
    payload["results"] = []
    for target in targets:
        row = copy.deepcopy(template)
        row.update(method=method, target_ratio=target, e2e_cosine=value)
        payload["results"].append(row)
    return payload


def _write(tmp_path: Path, name: str, payload: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(payload))
    return path


def test_join_keeps_every_method_and_a_later_row_wins(tmp_path):
    first = _write(tmp_path, "a", _payload("pq", [25.0, 100.0], 0.5))
    second = _payload("pq", [25.0], 0.75)
    second["results"] += _payload("lighttoken-default", [25.0], 0.9)["results"]
    second_path = _write(tmp_path, "b", second)
    assert fb.join_runs([first, second_path], tmp_path / "joined.json", "why") == 0
    joined = json.loads((tmp_path / "joined.json").read_text())
    rows = {(r["method"], r["target_ratio"]): r["e2e_cosine"] for r in joined["results"]}
    assert rows == {("pq", 25.0): 0.75, ("pq", 100.0): 0.5, ("lighttoken-default", 25.0): 0.9}
    assert [src["file"] for src in joined["joined_from"]] == ["a.json", "b.json"]
    table = (tmp_path / "joined.md").read_text()
    assert "why" in table and "`a.json` (pq;" in table and "`b.json` (lighttoken-default, pq;" in table


@pytest.mark.parametrize(("section", "key"), [("reference", "num_held_out"), ("reference", "sts_source"),
                                              ("model", "path")])  # fmt: skip
def test_join_refuses_runs_on_other_data(tmp_path, section, key):
    first = _write(tmp_path, "a", _payload("pq", [25.0], 0.5))
    other = _payload("lighttoken-default", [25.0], 0.9)
    other[section][key] = "something else"
    with pytest.raises(SystemExit, match="another model" if key == "path" else key):
        fb.join_runs([first, _write(tmp_path, "b", other)], tmp_path / "joined.json", None)
    assert not (tmp_path / "joined.json").exists()  # nothing half-written


def test_join_also_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the bench extra: pip install -e '.[bench]'")
    first = _write(tmp_path, "a", _payload("pq", [25.0], 0.5))
    second = _write(tmp_path, "b", _payload("lighttoken-default", [25.0], 0.9))
    assert fb.join_runs([first, second], tmp_path / "joined.json", None) == 0
    assert (tmp_path / "joined.png").stat().st_size > 0
