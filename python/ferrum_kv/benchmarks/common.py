"""Helpers shared by the benchmarks: timing, machine description, result tables and JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable


def best_time(fn: Callable[[], object], repeat: int = 7, min_time: float = 0.05) -> float:
    """Best-of-``repeat`` seconds per call of ``fn``, each sample looping for ``min_time`` s."""
    loops = 1
    while True:  # calibrate the loop count
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        loops *= 2
    best = elapsed / loops
    for _ in range(repeat - 1):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def machine() -> dict:
    model = platform.processor() or platform.machine()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512_bf16", "sha_ni"]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "features": [f for f in wanted if f in flags],
        "python": platform.python_version(),
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).rjust(widths[c]) for c in columns))


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


@dataclass
class Result:
    """One benchmark's output: a titled table (one row per case) and notes (ratios, caveats)."""

    title: str
    rows: list[dict]
    notes: list[str] = field(default_factory=list)

    def print(self) -> None:
        print(f"== {self.title}")
        print_table(self.rows, list(self.rows[0]))
        for note in self.notes:
            print(note)

    def as_json(self) -> dict:
        return {"title": self.title, "rows": self.rows, "notes": self.notes}


def report(result: Result, json_path: str | None) -> None:
    """Print the machine and the result; write both to json_path if given."""
    print(f"machine: {machine()}")
    result.print()
    write_json(json_path, {"machine": machine(), **result.as_json()})
