"""Where a monitor's windows lie: the one definition that the live monitor and `monitor backtest` share.

Count windows follow arrival order. Window k holds records k·stride … k·stride + size − 1 (positions in
the model's stream of records, from 0); tumbling windows (stride = size) cover every record once,
sliding ones start every `step` records. A window is complete once its last record has arrived.

Time windows follow record timestamps and are aligned to the epoch in UTC: window k covers
[k·stride, k·stride + duration) (stride = `step`, or `duration` when tumbling), so the same hour is the
same window wherever it is cut. A time window closes `grace` after its end; a window is complete once
closed. A record that arrives after its window was judged is counted as late there, never judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tuneloop.monitors.drift.checks import Record
from tuneloop.monitors.monitor_spec import WindowSpec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Window:
    rows: list[int]  # 1-based positions in the input, in window order
    records: list[Record]
    start: datetime | None = None  # bounds of a time window
    end: datetime | None = None
    complete: bool = True  # every record it can hold has arrived (count), or it has closed (time)


# --- count windows ------------------------------------------------------------------------------
def count_spans(n: int, spec: WindowSpec) -> list[tuple[int, int, bool]]:
    """(first position, end position, complete) of the count windows over `n` records. Tumbling: every
    record once, the last window possibly short; sliding: every complete window, or one short window
    when fewer than `size` records exist."""
    stride, size = spec.count_stride, spec.size
    if n == 0:
        return []
    if not spec.sliding:
        return [(s, min(s + size, n), s + size <= n) for s in range(0, n, size)]
    complete = [(s, s + size, True) for s in range(0, n - size + 1, stride)]
    return complete or [(0, n, False)]


# --- time windows -------------------------------------------------------------------------------
def first_index(ts: datetime, spec: WindowSpec) -> int:
    """The first time window that holds `ts` (sliding windows overlap: the earliest of them)."""
    stride = _stride(spec)
    return (ts - EPOCH - spec.length) // stride + 1


def last_index(ts: datetime, spec: WindowSpec) -> int:
    """The last time window that holds `ts`."""
    return (ts - EPOCH) // _stride(spec)


def index_of(start: datetime, spec: WindowSpec) -> int:
    return (start - EPOCH) // _stride(spec)


def bounds(index: int, spec: WindowSpec) -> tuple[datetime, datetime]:
    start = EPOCH + index * _stride(spec)
    return start, start + spec.length


def closes_at(index: int, spec: WindowSpec) -> datetime:
    return bounds(index, spec)[1] + spec.grace_length


def _stride(spec: WindowSpec) -> timedelta:
    stride = spec.stride
    assert isinstance(stride, timedelta)
    return stride


# --- a recorded stream, cut whole (backtest) -----------------------------------------------------
def split(records: Sequence[Record], spec: WindowSpec, *, now: datetime | None = None) -> list[Window]:
    """Every window over `records` (file order for count windows, timestamps for time windows); a time
    window is complete when it closed before `now` (None: all are)."""
    if spec.kind == "time":
        return _by_time(records, spec, now)
    return [
        Window(list(range(a + 1, b + 1)), list(records[a:b]), complete=done)
        for a, b, done in count_spans(len(records), spec)
    ]


def _by_time(records: Sequence[Record], spec: WindowSpec, now: datetime | None) -> list[Window]:
    import bisect

    if not records:
        return []
    stamps = [r.ts for r in records if r.ts is not None]
    assert len(stamps) == len(records), "time windows hold timestamped records only"
    order = sorted(range(len(records)), key=stamps.__getitem__)
    times = [stamps[i] for i in order]
    first, last = times[0], times[-1]
    windows = []
    for index in range(first_index(first, spec), last_index(last, spec) + 1):
        start, end = bounds(index, spec)
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
        windows.append(
            Window(
                [order[i] + 1 for i in range(lo, hi)],
                [records[order[i]] for i in range(lo, hi)],
                start,
                end,
                complete=now is None or closes_at(index, spec) <= now,
            )
        )
    return windows
