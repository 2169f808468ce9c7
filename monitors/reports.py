"""What a person reads of a monitor in its MLflow run: the verdict page of each window
(`reports/window-NNNNN.html`), the p-value plot (`scores.png`) and, for drifted windows or on
`tuneloop monitor report`, an Evidently report of the window against the reference
(`reports/window-NNNNN-evidently.html`).

The Evidently page describes the data (column summaries, text descriptors) under tuneloop's verdict
table. Evidently adds tests of its own (each value against the reference's, uncorrected for how many
are made: its drift tests gave 32% false alarms on our scenarios, `benchmarks/drift_quality.py`); they
never decide an alert, and the page says so above them. Importing Evidently takes seconds: only these
functions do it.
"""

from __future__ import annotations

import html
import math
from typing import Any

from tuneloop.monitors.drift.checks import Record, WindowResult

P_FLOOR = 1e-12  # smaller p-values are drawn at the floor: a fixed axis
PLOTTED_WINDOWS = 1000  # scores.png shows the newest windows: its cost stays flat over a monitor's life
TEXT_COLUMNS = ("prompt", "output")


def verdict_table(result: WindowResult) -> str:
    """tuneloop's verdict per check: statistic, p-value, drifted."""
    rows = "".join(
        f"<tr{' class=drift' if c.drifted else ''}><td>{html.escape(c.check)}</td><td>{c.statistic:.4g}</td>"
        f"<td>{c.p_value:.3g}</td><td>{'DRIFT' if c.drifted else ''}</td></tr>"
        for c in result.checks
    )
    return f"<table><tr><th>check</th><th>statistic</th><th>p-value</th><th></th></tr>{rows}</table>"


def _summary(monitor: str, model: str, step: int, result: WindowResult, alpha: float) -> str:
    return (
        f"<h1>{html.escape(monitor)}: window {step}</h1><p>model {html.escape(model)}, {result.size} records, "
        f"status <b>{html.escape(result.status)}</b>, per-check threshold {result.threshold:.3g} "
        f"(alpha {alpha} / {len(result.checks)} checks)</p>"
    )


STYLE = "body{font-family:sans-serif}td,th{padding:2px 8px}.drift{background:#fdd}"


def window_html(monitor: str, model: str, step: int, result: WindowResult, alpha: float) -> str:
    """The verdict page of one window: tuneloop's table, the words and examples typical of the window, what was left out."""
    explained = ""
    for c in result.checks:
        if c.details.get("typical_words") or c.details.get("typical_examples"):
            words = ", ".join(html.escape(w) for w in c.details.get("typical_words", []))
            examples = "".join(f"<li>{html.escape(e)}</li>" for e in c.details.get("typical_examples", []))
            explained += (
                f"<h2>{html.escape(c.check)}{' (drifted)' if c.drifted else ''}</h2>"
                f"<p>words most typical of this window: {words or '-'}</p><ul>{examples}</ul>"
            )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(monitor)} window {step}</title>"
        f"<style>{STYLE}</style></head><body>{_summary(monitor, model, step, result, alpha)}{verdict_table(result)}"
        f"{explained}{f'<h2>Left out</h2><ul>{notes}</ul>' if notes else ''}</body></html>"
    )


def evidently_html(
    monitor: str,
    model: str,
    step: int,
    result: WindowResult,
    alpha: float,
    *,
    window: list[Record],
    reference: list[Record],
) -> str:
    """Evidently's column summaries and text descriptors of `window` against `reference`, under tuneloop's verdict."""
    from evidently import Report
    from evidently.presets import DataSummaryPreset, TextEvals

    current, ref = _dataset(window), _dataset(reference)
    # (include_tests=False would drop Evidently's tests, but 0.7.23 then fails to render categorical columns)
    snapshot = Report([DataSummaryPreset(), TextEvals()]).run(current, ref)
    page = snapshot.get_html_str(as_iframe=False)
    banner = (
        f'<section id=tuneloop-verdict style="font-family:sans-serif;margin:16px"><style>{STYLE}</style>'
        f"{_summary(monitor, model, step, result, alpha)}"
        "<p><b>The verdicts that count are tuneloop's</b>: this table, whose p-values are corrected for the "
        "number of checks, decides drift and alerts. Evidently's sections below describe the window (current) "
        "against the monitor's reference; the pass/fail tests Evidently adds there are its own, uncorrected, "
        "and decide nothing.</p>"
        f"{verdict_table(result)}</section>"
    )
    at = page.find("<body>")
    return page[: at + len("<body>")] + banner + page[at + len("<body>") :] if at >= 0 else banner + page


def _dataset(records: list[Record]) -> Any:
    import pandas as pd
    from evidently import DataDefinition, Dataset
    from evidently.descriptors import CustomColumnDescriptor, TextLength, WordCount

    frame = pd.DataFrame({"prompt": [r.prompt for r in records], "output": [r.output for r in records]})
    categorical = []
    for column in ("prediction", "label"):
        values = [getattr(r, column) for r in records]
        if any(v is not None for v in values):
            frame[column] = values
            categorical.append(column)
    descriptors = []
    for column in TEXT_COLUMNS:
        descriptors += [
            TextLength(column, alias=f"{column} length"),
            WordCount(column, alias=f"{column} words"),
            CustomColumnDescriptor(column, non_letter_percent, alias=f"{column} non-letter %"),
        ]
    definition = DataDefinition(text_columns=list(TEXT_COLUMNS), categorical_columns=categorical)
    return Dataset.from_pandas(frame, data_definition=definition, descriptors=descriptors)


def non_letter_percent(column: Any) -> Any:
    """The share of characters that are neither letters nor spaces, in percent; 0 for an empty text.
    (Evidently's `NonLetterCharacterPercentage` divides by zero on an empty answer, which a model may give.)"""
    from evidently.core.datasets import DatasetColumn

    def percent(text: Any) -> float:
        text = text if isinstance(text, str) else ""
        return 100 * sum(not ch.isalpha() and ch != " " for ch in text) / len(text) if text else 0.0

    return DatasetColumn("num", column.data.map(percent))


def scores_plot(total: int, lowest_p: list[float | None], threshold: float) -> Any:
    """The smallest p-value of each of the newest windows (oldest first, of `total` judged; None: no
    p-value) against the alarm threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    steps, lowest = [], []
    for step, p in enumerate(lowest_p, start=total - len(lowest_p)):
        if p is not None and not math.isnan(p):
            steps.append(step)
            lowest.append(min(max(p, P_FLOOR), 1.0))
    # Fixed axes, ticks and margins: the drawing costs the same at the 10th window and the 5,000th. Tick
    # labels are plain text: matplotlib's default log labels go through mathtext, whose parser cache grows
    # with the process.
    fig, ax = plt.subplots(figsize=(8, 3))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.17, top=0.95)
    ax.semilogy(steps, lowest, marker="o" if len(steps) <= 100 else None, label="smallest p-value of the window")
    ax.set_ylim(P_FLOOR / 2, 2.0)
    ticks = [10.0**-k for k in range(0, 13, 3)]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(NullLocator())
    if not math.isnan(threshold):
        ax.axhline(threshold, color="red", linestyle="--", label=f"alarm threshold {threshold:.2g}")
    ax.set_xlabel("window" if total <= PLOTTED_WINDOWS else f"window (the newest {PLOTTED_WINDOWS} of {total})")
    ax.set_ylabel(f"p-value (floor {P_FLOOR:g})")
    ax.legend(loc="lower left")
    return fig
