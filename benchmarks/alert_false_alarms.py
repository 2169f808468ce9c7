"""How often a K=3 alert rule fires on traffic from the reference distribution, and whether a planted
15-window incident raises exactly one alert — the full replay (20 × 50 windows of 500 records, about
2 minutes on 2 cores). The test suite replays a fifth of it (tests/monitors/test_alert_rules.py) and checks the
same properties; this script measures the rate with more windows behind it.

    .venv/bin/python benchmarks/alert_false_alarms.py [--seeds 20] [--windows 50] [--size 500]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuneloop.demo import traffic
from tuneloop.monitors.alerting.rules import AlertRule, incidents
from tuneloop.monitors.drift.checks import Record
from tuneloop.monitors.drift.judge import build_reference, check_window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--windows", type=int, default=50)
    parser.add_argument("--size", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(12345)
    reference = build_reference([Record(**r) for r in (traffic.record(rng) for _ in range(6000))])
    rule = AlertRule.model_validate(
        {"name": "r", "when": {"drift": "any"}, "for_windows": 3, "resolve_after": 3, "cooldown_windows": 10}
    )

    def judged(rows: list[dict]) -> list:
        return [
            check_window(reference, [Record(**r) for r in rows[i : i + args.size]])
            for i in range(0, len(rows), args.size)
        ]

    started = time.monotonic()
    per_seed = [
        len(incidents(rule, judged(traffic.windows(args.windows, args.size, seed=1000 + s)))) for s in range(args.seeds)
    ]
    windows = args.seeds * args.windows
    print(
        f"false alerts: {sum(per_seed)} in {windows} fresh windows ({args.seeds} runs of {args.windows}); "
        f"per run {per_seed}; {time.monotonic() - started:.0f} s"
    )
    for s, kind in enumerate(("off_topic", "refusals", "wrong_predictions")):
        rows = (
            traffic.windows(15, args.size, seed=2000 + s)
            + traffic.windows(15, args.size, seed=3000 + s, kind=kind, share=0.2)
            + traffic.windows(20, args.size, seed=4000 + s)
        )
        found = incidents(rule, judged(rows))
        print(
            f"planted {kind} at windows 15-29: {len(found)} alert(s) "
            + ", ".join(f"(streak from {i.first}, fired at {i.opened}, resolved at {i.closed})" for i in found)
        )
    print(f"rate={sum(per_seed) / windows:.4f} per window (acceptance bound: at most 2 alerts in 1000 windows)")


if __name__ == "__main__":
    main()
