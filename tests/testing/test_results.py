"""regkit.testing.results: a benchmark's results file gains a case and keeps everything else."""

from __future__ import annotations

import json
from pathlib import Path

from regkit.testing.results import machine, save_case


def test_a_case_is_added_and_other_cases_and_sections_stay(tmp_path: Path) -> None:
    path = tmp_path / "results" / "bench.json"
    save_case(path, "a", {"median_s": 1.0}, command="first")
    content = json.loads(path.read_text())
    content["accuracy"] = {"assd_mm": 9.4}
    path.write_text(json.dumps(content))
    save_case(path, "b", {"median_s": 2.0}, command="second", machine_info=machine(threads=2))
    save_case(path, "a", {"median_s": 0.5}, command="third", machine_info=machine(threads=2))
    final = json.loads(path.read_text())
    assert final["command"] == "third"
    assert final["machine"]["threads"] == 2
    assert final["machine"]["cpus"] >= 1
    assert final["accuracy"] == {"assd_mm": 9.4}
    assert final["cases"]["a"]["median_s"] == 0.5
    assert final["cases"]["b"]["median_s"] == 2.0
    assert len(final["cases"]["a"]["load_avg"]) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["bench.json"]  # no temporary left


def test_an_unreadable_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("{ not json")
    assert save_case(path, "a", {"x": 1}, command="c")["cases"] == json.loads(
        path.read_text())["cases"]
