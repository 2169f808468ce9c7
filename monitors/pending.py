"""The live monitor's windows that are ready to judge: `windowing`'s windows over the stored records.

A monitor continues from the last window it judged (its cursor), so every complete window is judged
exactly once, however often it is checked: a count window once its last record arrived, a time window
once it closed. Records a window holds are read up to one arrival number (`upto_seq`), so a record
arriving while a check runs is either judged in its window or counted late there, never both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tuneloop.monitors.drift.checks import Record
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.monitors.references import as_record
from tuneloop.monitors.windowing import bounds, closes_at, count_spans, first_index, index_of
from tuneloop.store import Stores
from tuneloop.store.monitors import JudgedWindow, WindowPlace
from tuneloop.store.records import ModelSlice


@dataclass
class PendingWindow:
    place: WindowPlace
    records: list[Record]


@dataclass(frozen=True)
class Floor:
    """Records a version's windows never hold, because they are its reference: those before the end of the
    monitor's pinned production window (its first version), or up to `after_seq` (a later version's own
    first records)."""

    not_before: datetime | None = None
    after_seq: int | None = None


def pending_windows(
    stores: Stores,
    spec: MonitorSpec,
    model: ModelSlice,
    last: JudgedWindow | None,
    *,
    floor: Floor,
    upto_seq: int,
    now: datetime,
    limit: int,
) -> list[PendingWindow]:
    """The complete windows after `last` (the version's newest counted window), oldest first, at most `limit`."""
    scan = _Scan(stores, spec, model, last, floor, upto_seq)
    return _time_windows(scan, now=now, limit=limit) if spec.window.kind == "time" else _count_windows(scan, limit)


def not_before(spec: MonitorSpec) -> datetime | None:
    """Records before the end of a pinned production-window reference are the reference: never judged against it."""
    return spec.reference.window.end if spec.reference is not None and spec.reference.window is not None else None


CHUNK_WINDOWS = 20  # count windows read from the store at a time


def next_time_index(
    stores: Stores, spec: MonitorSpec, model: ModelSlice, last: JudgedWindow | None, floor: Floor
) -> int | None:
    """The time window after `last`; without one (the first check, or the first after windows knew their
    bounds) the window of the oldest unjudged record; None when there is no record."""
    if last is not None and last.start is not None:
        return index_of(last.start, spec.window) + 1
    after = max(
        (s for s in (last.last_seq if last is not None else None, floor.after_seq) if s is not None), default=None
    )
    first = stores.records.first_time(model, not_before=floor.not_before, after_seq=after)
    return first_index(first, spec.window) if first is not None else None


@dataclass(frozen=True)
class _Scan:
    """Where pending windows are looked for: a version's records after `last`, above `floor`, up to `upto_seq`."""

    stores: Stores
    spec: MonitorSpec
    model: ModelSlice
    last: JudgedWindow | None
    floor: Floor
    upto_seq: int


def _count_windows(scan: _Scan, limit: int) -> list[PendingWindow]:
    """`windowing.count_spans` over the records from the window after `last` on, a chunk at a time."""
    stores, spec, model, last, floor, upto_seq = (
        scan.stores,
        scan.spec,
        scan.model,
        scan.last,
        scan.floor,
        scan.upto_seq,
    )
    size, stride = spec.window.size, spec.window.count_stride
    first = floor.after_seq + 1 if floor.after_seq is not None else None
    from_seq, skip = (first, 0) if last is None else (_first_seq(stores, model, last, size), stride)
    found: list[PendingWindow] = []
    while len(found) < limit:
        wanted = min(CHUNK_WINDOWS, limit - len(found))
        rows = [
            r
            for r in stores.records.page(
                model, from_seq=from_seq, skip=skip, limit=(wanted - 1) * stride + size, not_before=floor.not_before
            )
            if r.seq <= upto_seq
        ]
        spans = [(a, b) for a, b, complete in count_spans(len(rows), spec.window) if complete][:wanted]
        for a, b in spans:
            found.append(
                PendingWindow(
                    WindowPlace(last_seq=rows[b - 1].seq, first_seq=rows[a].seq, version=model.version),
                    [as_record(r) for r in rows[a:b]],
                )
            )
        if len(spans) < wanted:
            return found
        from_seq, skip = rows[spans[-1][0]].seq, stride
    return found


def _first_seq(stores: Stores, model: ModelSlice, last: JudgedWindow, size: int) -> int:
    if last.first_seq is not None:
        return last.first_seq
    # a window judged before windows knew where they start: it held the newest `size` records up to its last
    held = stores.records.of(model, upto_seq=last.last_seq, newest=size)
    return held[0].seq if held else last.last_seq + 1


def _time_windows(scan: _Scan, *, now: datetime, limit: int) -> list[PendingWindow]:
    stores, model, floor, window = scan.stores, scan.model, scan.floor, scan.spec.window
    index = next_time_index(stores, scan.spec, model, scan.last, floor)
    if index is None:
        return []
    found: list[PendingWindow] = []
    while len(found) < limit and closes_at(index, window) <= now:
        start, end = bounds(index, window)
        rows = stores.records.of(
            model,
            start=max(start, floor.not_before) if floor.not_before else start,
            end=end,
            upto_seq=scan.upto_seq,
            after_seq=floor.after_seq,
        )
        found.append(
            PendingWindow(
                WindowPlace(last_seq=rows[-1].seq if rows else 0, start=start, end=end, version=model.version),
                [as_record(r) for r in rows],
            )
        )
        index += 1
    return found
