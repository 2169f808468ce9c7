"""Which model version a monitor watches now, and the reference that version is judged against.

A monitor on `NAME:VERSION` watches one version for ever. A monitor on `NAME@ALIAS` watches the
version holding the alias (records are attributed to the holder when they arrive), and keeps its
cursor, windows and alert streaks per version: when the alias moves, the new holder's windows start
afresh, and its reference follows the monitor's `reference`:

  file              the same file, for every version
  training_data     the new holder's own stored data (the old reference, with a note, if it has none)
  window            the new holder's first `window.size` production records (at least MIN_REFERENCE),
                    pinned once they have arrived; its windows start after them, so they are never judged
                    against themselves
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.errors import InvalidInput
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.monitors.pending import Floor, not_before
from tuneloop.monitors.references import MIN_REFERENCE, as_record, materialise, pin_records
from tuneloop.registry.client import RegistryClient
from tuneloop.store.monitors import MonitorRow, Tenure
from tuneloop.store.records import ModelSlice, StoredRecord


@dataclass
class Watch:
    """What one check of a monitor judges: the watched version's records, from past its reference."""

    model: ModelSlice
    tenure: Tenure
    floor: Floor
    moved_from: int | None = None  # the version watched before, when the alias moved since the last check
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """False while a pinned-window reference still waits for the version's first records."""
        return self.tenure.reference_sha256 is not None


def floor_of(spec: MonitorSpec, tenure: Tenure | None) -> Floor:
    """The records the version's windows never hold: its own reference records (a later version's first
    records), or those before the end of the monitor's pinned window (the version it was added on)."""
    if tenure is not None and tenure.reference_last_seq is not None:
        return Floor(after_seq=tenure.reference_last_seq)
    return Floor(not_before=not_before(spec))


def holder(rc: RegistryClient, spec: MonitorSpec) -> ModelSlice:
    return ModelSlice(*rc.models.resolve(spec.model or ""))


def watch(rc: RegistryClient, row: MonitorRow, spec: MonitorSpec) -> Watch:
    """The version the monitor watches now, starting its tenure (and its reference) if it is new."""
    model = holder(rc, spec)
    monitors = rc.stores.monitors
    tenure = monitors.tenure(spec.name, model.version)
    moved_from, notes = None, []
    if tenure is None:
        known = monitors.tenures(spec.name)
        if not known:  # added before versions were kept apart: its reference is the current holder's
            tenure = monitors.start_tenure(
                spec.name,
                model.version,
                reference_sha256=row.reference_sha256,
                reference_last_seq=None,
                reference_source="the monitor's reference",
            )
        else:
            moved_from = known[-1].version
            tenure = _start(rc, row, spec, model)
            notes.append(
                f"`{spec.model}` moved from version {moved_from} to {model.version}: windows start afresh for "
                f"version {model.version}, judged against {tenure.reference_source}"
            )
    if tenure.reference_sha256 is None:
        tenure, arrived = _form(rc, row, spec, model, tenure)
        if tenure.reference_sha256 is None:
            notes.append(
                f"version {model.version}'s reference is forming: {arrived} of its first {first_records_size(spec)} "
                "records have arrived; its windows are judged after them"
            )
    return Watch(model, tenure, floor_of(spec, tenure), moved_from, notes)


def _start(rc: RegistryClient, row: MonitorRow, spec: MonitorSpec, model: ModelSlice) -> Tenure:
    """The tenure of a version the monitor has not watched before, its reference chosen by the monitor's policy."""
    assert spec.reference is not None and row.mlflow_run_id is not None
    monitors = rc.stores.monitors
    if spec.reference.window is not None:
        return monitors.start_tenure(
            spec.name,
            model.version,
            reference_sha256=None,
            reference_last_seq=None,
            reference_source=f"its first {first_records_size(spec)} production records",
        )
    if spec.reference.training_data is not None:
        try:
            records, source = materialise(rc, spec)
            digest = pin_records(rc, spec, row.mlflow_run_id, records, source)
        except InvalidInput as e:  # e.g. an imported adapter: judged against the old reference rather than not at all
            return monitors.start_tenure(
                spec.name,
                model.version,
                reference_sha256=row.reference_sha256,
                reference_last_seq=None,
                reference_source=f"the monitor's first reference ({e.message})",
            )
        return monitors.start_tenure(
            spec.name, model.version, reference_sha256=digest, reference_last_seq=None, reference_source=source
        )
    return monitors.start_tenure(
        spec.name,
        model.version,
        reference_sha256=row.reference_sha256,
        reference_last_seq=None,
        reference_source="the monitor's reference file",
    )


def first_records_size(spec: MonitorSpec) -> int:
    """How many of a new holder's first production records become its reference: one window, and never
    fewer than a reference needs."""
    return max(spec.window.size, MIN_REFERENCE)


def _first_records(rc: RegistryClient, spec: MonitorSpec, model: ModelSlice) -> list[StoredRecord]:
    return rc.stores.records.page(model, limit=first_records_size(spec))


def _form(
    rc: RegistryClient, row: MonitorRow, spec: MonitorSpec, model: ModelSlice, tenure: Tenure
) -> tuple[Tenure, int]:
    """Pin the version's first `first_records_size` records as its reference once they have all arrived; (the
    tenure, how many of those records have arrived)."""
    rows = _first_records(rc, spec, model)
    if len(rows) < first_records_size(spec):
        return tenure, len(rows)
    assert row.mlflow_run_id is not None
    source = (
        f"the first {len(rows)} production records of version {model.version} (records {rows[0].seq}-{rows[-1].seq})"
    )
    digest = pin_records(rc, spec, row.mlflow_run_id, [as_record(r) for r in rows], source)
    return rc.stores.monitors.start_tenure(
        spec.name, model.version, reference_sha256=digest, reference_last_seq=rows[-1].seq, reference_source=source
    ), len(rows)
