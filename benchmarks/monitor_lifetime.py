"""Flat cost over a monitor's life: the time of a check after 5,000 judged windows against its 10th.

A monitor (count windows of 20 records, the descriptors check) with one alert rule is fed a window of
records and checked, window after window, through the real judge-and-log path: each window is
logged to MLflow (metrics, HTML report, scores.png) and the rule reads it. We time single checks (one
new window each; storing the records is not timed): the median of 5 from the 10th window on, and the
median of 5 once the monitor has judged `--windows` windows. Then the same for the code at
`--baseline-rev` (today's main before issue 17), whose cost grows with the monitor's age (the plot
re-reads every p-value series from MLflow, the rules replay every window): it is built to
`--baseline-windows` windows only, since building 5,000 of them that way takes hours.

Run: .venv/bin/python benchmarks/monitor_lifetime.py            (about 15 min on 2 cores)
Target: ratio <= 1.2 (printed last as `ratio=X.XX`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 20
EARLY, REPEATS = 10, 5


def _inner(windows: int, home: Path) -> dict[str, float]:
    """Build the monitor to `windows` windows in this process (whichever tuneloop is importable); the timings."""
    from tests.registry_helpers import make_versions
    from tuneloop.monitors import service
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    try:  # this tree's layout
        from tuneloop.demo import traffic
        from tuneloop.monitors.alerting import alerts
        from tuneloop.monitors.ingestion.records import parse_records, store
    except ImportError:  # the baseline's: flat monitors/ and pipelines/
        from tuneloop.monitors import alerts
        from tuneloop.monitors.records import parse_records, store
        from tuneloop.pipelines import traffic

    print(f"  code from {Path(service.__file__).parents[1]}", file=sys.stderr)
    rc = RegistryClient(Settings(home=home / "home", cache_dir=home / "cache"))
    make_versions(rc, "support", [{}])
    rng = random.Random(3)
    traffic.write(home / "reference.jsonl", [traffic.record(rng) for _ in range(200)])
    (home / "monitor.yaml").write_text(
        f"name: mon\nmodel: support:1\nwindow: {{size: {SIZE}}}\nmin_size: {SIZE}\n"
        "checks: [descriptors]\nreference: {file: reference.jsonl}\n"
    )
    (home / "rule.yaml").write_text("name: r\nmonitor: mon\nwhen: {drift: any}\nfor_windows: 3\n")
    service.add(rc, home / "monitor.yaml")
    alerts.add_rule(rc, home / "rule.yaml")
    resolver = (
        rc.models
        if hasattr(rc, "models")
        else __import__("tuneloop.monitors.records", fromlist=["x"]).ModelResolver(rc.mlflow)
    )

    if hasattr(service, "judge_pending"):  # this code: the one judge-and-reconcile path
        from tuneloop.monitors.judging import check

        def one_check() -> int:
            return len(check(rc, "mon").judged)
    else:  # the baseline: what its scheduler ran

        def one_check() -> int:
            judged = service.check_pending(rc, "mon")
            alerts.evaluate(rc, "mon")
            return len(judged)

    def feed(n: int) -> None:
        rows = [traffic.record(rng) for _ in range(n * SIZE)]
        items = [{"model": "support:1", "prompt": r["prompt"], "output": r["output"]} for r in rows]
        store(rc.stores, parse_records(items, 10**9), resolver)

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            feed(1)
            start = time.perf_counter()
            assert one_check() == 1
            times.append(time.perf_counter() - start)
        return times

    feed(EARLY - 1)
    one_check()  # windows 1 .. 9
    early = timed(REPEATS)  # the 10th .. 14th
    judged = EARLY - 1 + REPEATS
    started = time.perf_counter()
    while judged < windows:
        step = min(50, windows - judged)
        feed(step)
        judged += one_check()  # both judge every pending window in one call
        print(f"  {judged} windows judged ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    late = timed(REPEATS)
    return {"early": statistics.median(early), "late": statistics.median(late), "windows": float(judged)}


def _layout(source: Path, into: Path) -> Path:
    """The code in `source` laid out as installed (tuneloop/registry, /monitors, /pipelines): a PYTHONPATH
    entry. Both sides run from a copy, so edits to the working tree during a run change neither."""
    tree = into / "tree"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(source / "tuneloop", tree / "tuneloop", ignore=ignore)
    for package in ("registry", "monitors", "pipelines"):
        shutil.copytree(source / package, tree / "tuneloop" / package, ignore=ignore)
    shutil.copytree(source / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__", "fixtures"))
    return tree


def _baseline_tree(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(into / "checkout"), rev],
        check=True,
        capture_output=True,
    )
    return _layout(into / "checkout", into)


def _run(windows: int, pythonpath: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "TUNELOOP_HOME": str(work / "home"), "PYTHONPATH": str(pythonpath)}
    cwd = pythonpath
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--inner", str(windows), str(work)],
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.PIPE,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=5000)
    parser.add_argument("--baseline-windows", type=int, default=500)
    parser.add_argument("--baseline-rev", default="27767ec")
    parser.add_argument("--inner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(_inner(int(args.inner[0]), Path(args.inner[1]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "old").mkdir()
        (work / "new").mkdir()
        new_tree = _layout(REPO, work / "new")
        old = _run(args.baseline_windows, _baseline_tree(args.baseline_rev, work / "old"), work / "old")
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "old" / "checkout")], check=False
        )
        new = _run(args.windows, new_tree, work / "new")
    print(f"{'code':<22}{'windows':>9}{'10th check s':>14}{'check then s':>14}{'ratio':>8}")
    print(
        f"{args.baseline_rev + ' (before)':<22}{old['windows']:>9.0f}{old['early']:>14.3f}{old['late']:>14.3f}"
        f"{old['late'] / old['early']:>8.2f}"
    )
    print(
        f"{'this tree':<22}{new['windows']:>9.0f}{new['early']:>14.3f}{new['late']:>14.3f}{new['late'] / new['early']:>8.2f}"
    )
    print(f"ratio={new['late'] / new['early']:.2f}")


if __name__ == "__main__":
    main()
