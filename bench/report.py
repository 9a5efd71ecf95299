"""docs/benchmarks.md: a header saying what was measured where, then one section per scenario.

Scenarios (pass-through, streaming memory, later purge scaling) each hand back a ``Section``;
this module only assembles them, so adding a scenario never touches the others' code.
Charts use matplotlib, installed into the running venv on first use when missing (it is a
benchmark-only dependency: nothing in the proxy needs it).
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any


@dataclass
class Section:
    """One scenario's part of the report: markdown body plus the chart files it references."""

    title: str
    body: str
    charts: list[Path] = field(default_factory=list)


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "n/a"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "n/a"


def machine_info(repo: Path) -> dict[str, str]:
    """What a reader needs to judge the numbers: code version, machine, tool versions, load."""
    commit = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {
        "commit": commit + (" (working tree has uncommitted changes)" if dirty not in ("", "n/a") else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp / httpx": f"{_version('aiohttp')} / {_version('httpx')}",
        "nginx": _run(["nginx", "-v"]),
        "wrk": _run(["wrk", "-v"]),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _mem_total() -> str:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def render(meta: dict[str, str], sections: list[Section], preface: str, docs_dir: Path) -> str:
    lines = ["# Benchmarks", "", preface.strip(), "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in meta.items()]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.body.strip()]
        for chart in section.charts:
            lines += ["", f"![{chart.stem}]({os.path.relpath(chart, docs_dir)})"]
    return "\n".join(lines) + "\n"


def write_report(path: Path, meta: dict[str, str], sections: list[Section], preface: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(meta, sections, preface, path.parent), encoding="utf-8")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; numbers are right-aligned by the caller's formatting, not here."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only backend, installing matplotlib into this venv if absent."""
    try:
        import matplotlib
    except ImportError:
        print("bench: installing matplotlib into", sys.prefix, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=True)
        importlib.invalidate_caches()
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_chart(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[list[float], list[float]]],
    log_x: bool = False,
    ylim: tuple[float, float] | None = None,
    hline: tuple[float, str] | None = None,
) -> Path:
    """One PNG with a line per series (label -> (xs, ys))."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", label=label)
    if log_x:
        axes.set_xscale("log")
        ticks = sorted({x for xs, _ in series.values() for x in xs})
        axes.set_xticks(ticks, [f"{t:g}" for t in ticks])
    if hline is not None:
        axes.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
