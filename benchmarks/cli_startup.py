"""How long `tuneloop --help` takes, side by side with bare Python and with `import mlflow`.

Target: `tuneloop --help` <= 0.3 s wall. Run: .venv/bin/python benchmarks/cli_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 10
EXE = str(Path(sys.executable).with_name("tuneloop"))


def wall(cmd: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    python = wall([sys.executable, "-c", "pass"])
    help_ = wall([EXE, "--help"])
    models_help = wall([EXE, "models", "promote", "--help"])
    mlflow = wall([sys.executable, "-c", "import mlflow"], runs=3)
    print(f"{'command':38s} {'median wall':>12s} {'vs bare python':>15s}")
    for name, value in [
        ("python -c pass (baseline)", python),
        ("tuneloop --help", help_),
        ("tuneloop models promote --help", models_help),
        ("python -c 'import mlflow' (avoided)", mlflow),
    ]:
        print(f"{name:38s} {value:11.3f}s {value / python:14.1f}x")
    verdict = "OK" if help_ <= 0.3 else "TOO SLOW"
    print(
        f"\ntuneloop --help: {help_:.3f} s (target <= 0.300 s): {verdict}; {mlflow / help_:.0f}x faster than importing mlflow"
    )


if __name__ == "__main__":
    main()
