"""Shared set-up of the renderer benchmarks: thread count, seeds, peak memory, and the report.

Every benchmark hands one row to the ``record`` fixture. At the end of the run the rows (with the
machine's description and load) are written to ``benchmarks/results/render_cpu.json`` and printed
as a markdown table for the README. Targets are checked there too, because one of them (torch
against nanodrr) needs two rows.

Target kinds a row may carry:
    * ``{"kind": "max_s", "value": s}``: met when the row's median is at most ``s`` seconds.
    * ``{"kind": "speedup", "over": backend, "value": r}``: met when the median of the row of the
      same case with backend ``over``, divided by this row's median, is at least ``r``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

THREADS = 2
SEED = 0
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "render_cpu.json"
COMMAND = ".venv/bin/pytest benchmarks/test_bench_render.py --benchmark-only -p no:cacheprovider"

# Display order of the cases and backends in the table.
CASE_ORDER = ["drr_256", "batch_64x128", "depth_256", "resample_128"]
BACKEND_ORDER = ["gl", "torch", "nanodrr"]

_ROWS: list[dict[str, Any]] = []
_RUN: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Fix threads and seeds before anything runs (poses use ``np.random.default_rng(seed)``)."""
    _RUN["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    _RUN["started"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    random.seed(SEED)
    try:
        import torch
    except ImportError:  # the test module skips itself; nothing to set up
        return
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def seed() -> int:
    """The one seed every random pose is drawn with."""
    return SEED


# ------------------------------------------------------------------ memory
def _status_kb(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak resident memory of this process over a block, in MB.

    Where Linux lets a process reset its high-water mark (``/proc/self/clear_refs``), the peak is
    the block's own; elsewhere it is ``getrusage``'s maximum over the process so far, and
    ``scope`` says so.
    """

    start_mb: float | None = None
    peak_mb: float | None = None
    scope: str = "block"

    @contextmanager
    def measure(self) -> Iterator[PeakRSS]:
        own = _reset_peak()
        start = _status_kb("VmRSS")
        self.start_mb = None if start is None else start / 1024.0
        try:
            yield self
        finally:
            hwm = _status_kb("VmHWM") if own else None
            if hwm is not None:
                self.peak_mb = hwm / 1024.0
                self.scope = "block"
            else:
                self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
                self.scope = "process"


@pytest.fixture
def peak_rss() -> PeakRSS:
    """A fresh :class:`PeakRSS` per benchmark."""
    return PeakRSS()


# ------------------------------------------------------------------ recording
@pytest.fixture
def record(request: pytest.FixtureRequest):
    """``record(benchmark, case=..., backend=..., **fields)``: keep one row for the report."""

    def _record(benchmark: Any, *, case: str, backend: str, scale: float = 1.0,
                **fields: Any) -> dict[str, Any] | None:
        meta = getattr(benchmark, "stats", None)
        stats = getattr(meta, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was timed
            return None
        row: dict[str, Any] = {
            "test": request.node.nodeid,
            "case": case,
            "backend": backend,
            "median_s": stats.median * scale,
            "iqr_s": stats.iqr * scale,
            "q1_s": stats.q1 * scale,
            "q3_s": stats.q3 * scale,
            "min_s": stats.min * scale,
            "max_s": stats.max * scale,
            "rounds": stats.rounds,
        }
        if scale != 1.0:
            row["scaled_by"] = scale
            row["measured_median_s"] = stats.median
        row.update(fields)
        _ROWS.append(row)
        return row

    return _record


def _evaluate(rows: list[dict[str, Any]]) -> None:
    """Fill ``target_text``, ``target_value`` and ``met`` of every row that has a target."""
    by_key = {(r["case"], r["backend"]): r for r in rows}
    for row in rows:
        target = row.get("target")
        if not target:
            row["met"] = None
            continue
        if target["kind"] == "max_s":
            limit = float(target["value"])
            row["target_text"] = f"≤ {_ms(limit)} ms"
            row["met"] = row["median_s"] <= limit
        elif target["kind"] == "speedup":
            ref = by_key.get((row["case"], target["over"]))
            want = float(target["value"])
            if ref is None:
                row["target_text"] = f"≥ {want:g}× {target['over']} (not run)"
                row["met"] = None
                continue
            ratio = ref["median_s"] / row["median_s"]
            row["speedup"] = ratio
            row["target_text"] = f"≥ {want:g}× {target['over']}: {ratio:.1f}×"
            row["met"] = ratio >= want
        else:
            row["target_text"] = str(target)
            row["met"] = None


def _ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    ms = seconds * 1e3
    if ms >= 1000:
        return f"{ms:,.0f}"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def _sort_key(row: dict[str, Any]) -> tuple[int, int]:
    case = CASE_ORDER.index(row["case"]) if row["case"] in CASE_ORDER else len(CASE_ORDER)
    backend = (BACKEND_ORDER.index(row["backend"]) if row["backend"] in BACKEND_ORDER
               else len(BACKEND_ORDER))
    return case, backend


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table: one line per (case, backend)."""
    head = ("| case | backend | median (ms) | IQR (ms) | rounds | first call (ms) | samples/ray "
            "| peak RSS (MB) | target | met |")
    lines = [head, "| " + " | ".join(["---"] * 10) + " |"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        label = r.get("label", r["backend"])
        rss = r.get("peak_rss_mb")
        rss_text = "–" if rss is None else f"{rss:,.0f}"
        if rss is not None and r.get("rss_start_mb") is not None:
            rss_text += f" (+{max(rss - r['rss_start_mb'], 0):,.0f})"
        lines.append(
            f"| {r.get('case_title', r['case'])} | {label} | {_ms(r['median_s'])} "
            f"| {_ms(r['iqr_s'])} | {r['rounds']} | {_ms(r.get('first_call_s'))} "
            f"| {r.get('samples_per_ray_text', '–')} | {rss_text} "
            f"| {r.get('target_text', '')} | {met} |")
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "threads": THREADS,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["mem_total_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    for name in ("torch", "numpy", "nanodrr", "moderngl", "pytest_benchmark"):
        module = sys.modules.get(name)
        if module is not None:
            info[f"{name}_version"] = getattr(module, "__version__", None)
    if "nanodrr" in sys.modules and info.get("nanodrr_version") is None:
        try:
            from importlib.metadata import version

            info["nanodrr_version"] = version("nanodrr")
        except Exception:  # metadata missing: leave it out
            pass
    gl = _RUN.get("gl_info")
    if gl:
        info["gl"] = gl
    return info


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Write the JSON and print the markdown table (only when something was timed)."""
    if not _ROWS:
        return
    rows = sorted(_ROWS, key=_sort_key)
    _evaluate(rows)
    table = markdown_table(rows)
    load_start = _RUN.get("load_avg_start")
    load_end = [round(x, 2) for x in os.getloadavg()]
    notes = list(dict.fromkeys(n for r in rows for n in r.get("notes", [])))
    payload = {
        "schema": 1,
        "command": COMMAND,
        "started": _RUN.get("started"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_start": load_start,
        "load_avg_end": load_end,
        "complete": {(r["case"], r["backend"]) for r in rows} >= {
            (c, b) for c in CASE_ORDER for b in ("torch", "gl")},
        "machine": _machine(),
        "inputs": _RUN.get("inputs", {}),
        "checks": _RUN.get("checks", {}),
        "cases": rows,
        "markdown": table,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tr = terminalreporter
    tr.write_sep("=", "renderer benchmarks (median and IQR over timed rounds)")
    tr.write_line(f"load average at start (1, 5, 15 min): {load_start}; at end: {load_end}")
    tr.write_line("")
    for line in table.splitlines():
        tr.write_line(line)
    if notes:
        tr.write_line("")
        for note in notes:
            tr.write_line(f"- {note}")
    tr.write_line("")
    tr.write_line(f"written: {RESULTS_PATH}")


def _jsonable(x: Any) -> Any:
    """Numpy scalars and arrays, sets and paths as JSON."""
    if isinstance(x, set | frozenset | tuple):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    tolist = getattr(x, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(x)


@pytest.fixture(scope="session")
def run_info() -> dict[str, Any]:
    """Run-wide facts for the JSON (``inputs``, ``checks``, ``gl_info``)."""
    return _RUN
