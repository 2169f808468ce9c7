"""Cutting a recorded stream of records into a monitor's windows.

Count windows follow arrival order (the file's row order); time windows follow record timestamps
(rows sorted by time, the first window starting at the first timestamp, windows until one reaches the
newest record). Tumbling windows cover every record once, the last one possibly short; sliding count
windows start every `step` records and are all full (one window when there is less data than that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tuneloop.monitors.checks import Record
from tuneloop.monitors.monitor_spec import WindowSpec


@dataclass
class Window:
    rows: list[int]  # 1-based positions in the input, in window order
    records: list[Record]
    start: datetime | None = None  # bounds of a time window
    end: datetime | None = None


def split(records: Sequence[Record], spec: WindowSpec) -> list[Window]:
    return _by_time(records, spec) if spec.kind == "time" else _by_count(records, spec)


def _by_count(records: Sequence[Record], spec: WindowSpec) -> list[Window]:
    stride = int(spec.stride)  # type: ignore[call-overload]
    if spec.sliding:
        starts = list(range(0, max(1, len(records) - spec.size + 1), stride))
    else:
        starts = list(range(0, len(records), spec.size))
    return [Window(list(range(s + 1, min(s + spec.size, len(records)) + 1)), list(records[s : s + spec.size])) for s in starts]


def _by_time(records: Sequence[Record], spec: WindowSpec) -> list[Window]:
    import bisect

    order = sorted(range(len(records)), key=lambda i: records[i].ts)  # type: ignore[arg-type, return-value]
    times = [records[i].ts for i in order]
    length, stride = spec.length, spec.stride
    assert isinstance(stride, timedelta)
    first, last = times[0], times[-1]
    assert first is not None and last is not None
    windows = []
    start = first
    while True:
        end = start + length
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)  # type: ignore[arg-type]
        windows.append(Window([order[i] + 1 for i in range(lo, hi)], [records[order[i]] for i in range(lo, hi)], start, end))
        if end > last:  # this window reached the newest record
            return windows
        start += stride
