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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from regkit.testing.results import load_avg

THREADS = 2
SEED = 0
SHARED_CORES = 0.25  # CPU used by other processes, per wall second, above which a case is flagged
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "render_cpu.json"
COMMAND = ".venv/bin/pytest benchmarks/test_bench_render.py --benchmark-only -p no:cacheprovider"

# Display order of the cases and backends in the table.
CASE_ORDER = ["drr_256", "batch_64x128", "depth_256", "resample_128"]
BACKEND_ORDER = ["gl", "torch", "nanodrr"]

_ROWS: list[dict[str, Any]] = []
_RUN: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:  # noqa: ARG001 - pytest hook signature
    """Fix threads and seeds before anything runs (poses use ``np.random.default_rng(seed)``)."""
    _RUN["load_avg_start"] = load_avg()
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


def _cpu_busy_s() -> float | None:
    """Seconds of CPU time all processes have used, from ``/proc/stat`` (Linux), or None."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CaseMonitor:
    """Peak memory and CPU sharing of one benchmark case.

    * ``peak_mb``: peak resident memory over the case. Where Linux lets a process reset its
      high-water mark (``/proc/self/clear_refs``) it is the case's own (``scope`` "case");
      elsewhere ``getrusage``'s maximum over the process so far (``scope`` "process").
    * ``own_cores``: this process's CPU time over wall time (about 2 when both cores work).
    * ``others_cores``: CPU time other processes used over the case, per wall second: the
      machine was shared when this is well above 0 (the figures are then too slow).
    """

    start_mb: float | None = None
    peak_mb: float | None = None
    scope: str = "case"
    own_cores: float | None = None
    others_cores: float | None = None

    @contextmanager
    def measure(self) -> Iterator[CaseMonitor]:
        own = _reset_peak()
        start = _status_kb("VmRSS")
        self.start_mb = None if start is None else start / 1024.0
        busy0, own0, wall0 = _cpu_busy_s(), _own_cpu_s(), time.perf_counter()
        try:
            yield self
        finally:
            wall = time.perf_counter() - wall0
            own_s = _own_cpu_s() - own0
            busy1 = _cpu_busy_s()
            self.own_cores = own_s / wall if wall > 0 else None
            if busy0 is not None and busy1 is not None and wall > 0:
                self.others_cores = max(busy1 - busy0 - own_s, 0.0) / wall
            hwm = _status_kb("VmHWM") if own else None
            if hwm is not None:
                self.peak_mb = hwm / 1024.0
                self.scope = "case"
            else:
                self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
                self.scope = "process"

    def fields(self) -> dict[str, Any]:
        """The row fields: memory, and the load averages and CPU shares over the case."""
        return {
            "peak_rss_mb": self.peak_mb, "rss_start_mb": self.start_mb,
            "peak_rss_scope": self.scope,
            "own_cores": None if self.own_cores is None else round(self.own_cores, 2),
            "others_cores": None if self.others_cores is None else round(self.others_cores, 2),
            "load_avg_after": load_avg(),
        }


@pytest.fixture
def monitor() -> CaseMonitor:
    """A fresh :class:`CaseMonitor` per benchmark."""
    return CaseMonitor()


# ------------------------------------------------------------------ recording
@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any] | None]:
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


def _cores(row: dict[str, Any]) -> str:
    own, others = row.get("own_cores"), row.get("others_cores")
    if own is None:
        return "–"
    return f"{own:.1f} / {'?' if others is None else f'{others:.1f}'}"


def _sort_key(row: dict[str, Any]) -> tuple[int, int]:
    case = CASE_ORDER.index(row["case"]) if row["case"] in CASE_ORDER else len(CASE_ORDER)
    backend = (BACKEND_ORDER.index(row["backend"]) if row["backend"] in BACKEND_ORDER
               else len(BACKEND_ORDER))
    return case, backend


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table: one line per (case, backend)."""
    head = ("| case | backend | median (ms) | IQR (ms) | rounds | first call (ms) | samples/ray "
            "| peak RSS (MB) | CPU: own / others | target | met |")
    lines = [head, "| " + " | ".join(["---"] * 11) + " |"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        label = r.get("label", r["backend"])
        rss = r.get("peak_rss_mb")
        rss_text = "–" if rss is None else f"{rss:,.0f}"
        if rss is not None and r.get("rss_start_mb") is not None:
            rss_text += f" (+{max(rss - r['rss_start_mb'], 0):,.0f})"
        shared = "†" if (r.get("others_cores") or 0.0) > SHARED_CORES else ""
        lines.append(
            f"| {r.get('case_title', r['case'])} | {label} | {_ms(r['median_s'])}{shared} "
            f"| {_ms(r['iqr_s'])} | {r['rounds']} | {_ms(r.get('first_call_s'))} "
            f"| {r.get('samples_per_ray_text', '–')} | {rss_text} | {_cores(r)} "
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
    load_end = load_avg()
    notes = list(dict.fromkeys(n for r in rows for n in r.get("notes", [])))
    shared = [f"{r['case']}/{r['backend']}" for r in rows
              if (r.get("others_cores") or 0.0) > SHARED_CORES]
    if shared:
        notes.append(f"† other processes used more than {SHARED_CORES:g} of a core during "
                     f"{', '.join(shared)}: those figures are slower than on an idle machine")
    notes.append("CPU: own / others = CPU seconds per wall second used by this process / by "
                 "every other process during the case (about 2 / 0 on an idle 2-core machine)")
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
