"""Exact + near dedup throughput of `tuneloop data curate`, in one run.

tuneloop: exact dedup (hash of the normalised text) + near dedup (MinHash LSH over word 3-grams,
candidates confirmed by exact Jaccard) on N short support rows, with planted near duplicates.
Baseline in the same run: the naive method — exact Jaccard of every pair — on a subset of M rows,
timed and extrapolated to N by its quadratic cost (pairs grow as N²/2). Both report the planted
near duplicates they find, so the speed is not bought with misses. Target: 100,000 rows in ≤ 60 s.

    .venv/bin/python benchmarks/curate_throughput.py [--rows 100000] [--baseline-rows 3000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuneloop.demo import traffic
from tuneloop.pipelines.data.cleaning import dedup

THRESHOLD = 0.8


def rows(n: int, seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """n support tickets (prompt + answer, ~25 words); 1% are near copies of an earlier row (one word changed)."""
    rng = random.Random(seed)
    texts, planted = [], {}
    while len(texts) < n:
        if texts and rng.random() < 0.01:
            source = rng.randrange(len(texts))
            words = texts[source].split()
            words[rng.randrange(len(words))] = "changed"
            planted[len(texts)] = source
            texts.append(" ".join(words))
        else:
            r = traffic.record(rng)
            texts.append(f"{r['prompt']} {r['output']} ticket {rng.randint(0, 10**9)} {rng.randint(0, 10**9)}")
    return texts, planted


def naive(texts: list[str]) -> list[int | None]:
    sets = [dedup.shingles(t) for t in texts]
    out: list[int | None] = []
    for i, s in enumerate(sets):
        out.append(next((j for j in range(i) if dedup.jaccard(s, sets[j]) >= THRESHOLD), None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=3000)
    args = parser.parse_args()

    texts, planted = rows(args.rows)
    started = time.perf_counter()
    exact = dedup.exact_duplicates(texts)
    near = dedup.near_duplicates(texts, THRESHOLD)
    ours = time.perf_counter() - started
    kept = {i for i in range(len(texts)) if near[i] is None and exact[i] is None}
    # A planted copy must go when its source stays and they really are near duplicates (one changed word can
    # push a short row below the threshold; a copy of a dropped row is judged against what is kept).
    due = [
        i
        for i, j in planted.items()
        if j in kept and dedup.jaccard(dedup.shingles(texts[i]), dedup.shingles(texts[j])) >= THRESHOLD
    ]
    found = sum(i not in kept for i in due)

    subset = texts[: args.baseline_rows]
    started = time.perf_counter()
    base = naive(subset)
    base_s = time.perf_counter() - started
    extrapolated = base_s * (args.rows / args.baseline_rows) ** 2
    sub_planted = {i: j for i, j in planted.items() if i < args.baseline_rows}
    ours_on_subset = dedup.near_duplicates(subset, THRESHOLD)
    agree = sum((base[i] is None) == (ours_on_subset[i] is None) for i in range(len(subset)))

    print(f"{'':34s}{'rows':>9s}{'seconds':>10s}{'rows/s':>10s}")
    print(f"{'tuneloop (exact + MinHash LSH)':34s}{args.rows:9d}{ours:10.1f}{args.rows / ours:10.0f}")
    print(
        f"{'naive pairwise Jaccard (measured)':34s}{args.baseline_rows:9d}{base_s:10.1f}{args.baseline_rows / base_s:10.0f}"
    )
    print(
        f"{'naive pairwise, extrapolated (n²)':34s}{args.rows:9d}{extrapolated:10.0f}{args.rows / extrapolated:10.1f}"
    )
    print(
        f"speed-up at {args.rows} rows: {extrapolated / ours:.0f}x; target 100,000 rows in <= 60 s: "
        f"{'met' if ours * 100_000 / args.rows <= 60 else 'NOT met'}"
    )
    print(
        f"planted near copies at Jaccard >= {THRESHOLD} of a kept row: {found} of {len(due)} dropped "
        f"({len(planted)} planted in all)"
    )
    print(
        f"on the {args.baseline_rows}-row subset, tuneloop and the naive method agree on {agree} of {len(subset)} rows "
        f"({len(sub_planted)} planted there)"
    )


if __name__ == "__main__":
    main()
