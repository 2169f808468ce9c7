"""`tuneloop data curate`: one pass over a data file, every change and drop accounted for.

Steps, in order: rows that fail validation are dropped (with the validator's reason), and so are
synthetic rows nobody reviewed (`tuneloop data review`) under the policy `hold`; every text field is
normalised (NFC, whitespace) and scrubbed of PII; rows outside the length limits are dropped, and rows
confidently in a language not asked for (`languages`; short rows the identifier is unsure of are kept
and counted); exact duplicates, then near duplicates, are dropped (the first occurrence is kept); the
rest is split into train and eval, reproducibly (seeded), stratified by label where rows carry one. The
report counts every reason, shows samples, and adds up: rows in = rows out + rows dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput, TuneloopError
from tuneloop.names import Experiment, RunTag
from tuneloop.pipelines.data import formats as data_io
from tuneloop.pipelines.data.cleaning import dedup, pii
from tuneloop.pipelines.data.options import CurateOptions
from tuneloop.pipelines.data.review import is_unreviewed_synthetic
from tuneloop.rowfiles import TEXT_FIELDS, read_rows, text_of, write_jsonl

SAMPLES = 3


def curate(path: Path, out_dir: Path, options: CurateOptions, fmt: str = "auto") -> dict[str, Any]:
    scan = data_io.check(path, fmt)
    valid_lines = set(scan.lines)
    _check_languages(options.languages)
    report: dict[str, Any] = {
        "input": str(path),
        "input_sha256": "sha256:" + file_sha256(path),
        "format": scan.format,
        "rows_in": scan.total,
        "dropped": Counter(),
        "changed": Counter(),
        "pii": Counter(),
        "languages": Counter(),
        "samples": {},
    }

    def sample(reason: str, entry: dict[str, Any]) -> None:
        report["samples"].setdefault(reason, [])
        if len(report["samples"][reason]) < SAMPLES:
            report["samples"][reason].append(entry)

    for problem in scan.problems:
        report["dropped"]["invalid"] += 1
        sample("invalid", {"line": problem.line, "why": problem.message})

    kept: list[tuple[int, dict[str, Any]]] = []
    for line, row in read_rows(path):
        if line not in valid_lines or not isinstance(row, dict):
            continue
        if options.unreviewed_synthetic == "hold" and is_unreviewed_synthetic(row):
            report["dropped"]["unreviewed_synthetic"] += 1
            sample("unreviewed_synthetic", {"line": line, "id": row["synthetic"].get("id")})
            continue
        cleaned, normalised, found = _clean(row, options.scrub_pii)
        if normalised:
            report["changed"]["normalised"] += 1
        if found:
            report["changed"]["pii_scrubbed"] += 1
            report["pii"].update(found)
            sample("pii_scrubbed", {"line": line, "kinds": dict(found)})
        length = len(text_of(cleaned))
        if length < options.min_chars or (options.max_chars is not None and length > options.max_chars):
            reason = "too_short" if length < options.min_chars else "too_long"
            report["dropped"][reason] += 1
            sample(reason, {"line": line, "chars": length})
            continue
        if options.languages:
            from tuneloop.pipelines.data.cleaning.language import detect

            language = detect(text_of(cleaned), options.language_confidence)
            report["languages"][language or "unsure"] += 1
            if language is not None and language not in options.languages:
                report["dropped"]["language"] += 1
                sample("language", {"line": line, "language": language})
                continue
        kept.append((line, cleaned))

    texts = [text_of(r) for _, r in kept]
    exact = dedup.exact_duplicates(texts)
    near = (
        dedup.near_duplicates(texts, options.near_threshold, seed=options.seed)
        if options.near_dedup
        else [None] * len(kept)
    )
    rows, lines = [], []
    for i, (line, row) in enumerate(kept):
        twin = exact[i] if exact[i] is not None else near[i]
        if twin is not None:
            reason = "exact_duplicate" if exact[i] is not None else "near_duplicate"
            report["dropped"][reason] += 1
            sample(reason, {"line": line, "duplicate_of_line": kept[twin][0]})
            continue
        rows.append(row)
        lines.append(line)

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [str(r[options.label_field]) if options.label_field in r else None for r in rows]
    to_eval = dedup.split(
        [text_of(r) for r in rows], options.eval_share, seed=options.seed, labels=labels if any(labels) else None
    )
    train = write_jsonl(out_dir / "train.jsonl", [r for r, e in zip(rows, to_eval, strict=True) if not e])
    evaluation = (
        write_jsonl(out_dir / "eval.jsonl", [r for r, e in zip(rows, to_eval, strict=True) if e])
        if any(to_eval)
        else None
    )
    report.update(
        {
            "rows_out": len(rows),
            "train_rows": len(rows) - sum(to_eval),
            "eval_rows": sum(to_eval),
            "stratified_by": options.label_field if any(labels) else None,
            "outputs": {"train": str(train), **({"eval": str(evaluation)} if evaluation else {})},
            "output_sha256": {
                "train": "sha256:" + file_sha256(train),
                **({"eval": "sha256:" + file_sha256(evaluation)} if evaluation else {}),
            },
            "options": options.__dict__,
        }
    )
    for key in ("dropped", "changed", "pii", "languages"):
        report[key] = dict(report[key])
    if report["rows_in"] != report["rows_out"] + sum(report["dropped"].values()):
        raise TuneloopError(
            f"curation lost track of rows: {report['rows_in']} in, {report['rows_out']} out, "
            f"{report['dropped']} dropped",
            hint="report this as a bug",
        )
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out_dir / "report.html").write_text(html_report(report), encoding="utf-8")
    return report


def _check_languages(languages: tuple[str, ...]) -> None:
    if not languages:
        return
    from tuneloop.pipelines.data.cleaning.language import known_languages

    unknown = sorted(set(languages) - known_languages())
    if unknown:
        raise InvalidInput(
            f"unknown language code(s): {', '.join(unknown)}",
            hint="use ISO 639-1 codes such as en, de, fr, es (the identifier knows "
            f"{len(known_languages())} languages)",
        )


def clean_text(text: str, *, scrub_pii: bool = True) -> tuple[str, bool, list[str]]:
    """The one normaliser of text that trains: (NFC and whitespace normalised, PII scrubbed; whether
    normalising changed it; the PII kinds found). Retraining cleans production text with it too."""
    out = dedup.normalise(text)
    changed = out != text
    kinds: list[str] = []
    if scrub_pii:
        out, found = pii.scrub(out)
        kinds = list(found)
    return out, changed, kinds


def _clean(row: dict[str, Any], scrub_pii: bool) -> tuple[dict[str, Any], bool, Counter[str]]:
    """(cleaned row, whether normalisation changed it, PII found) — non-text fields are kept as they are."""
    found: Counter[str] = Counter()
    changed = False

    def fix(text: str) -> str:
        nonlocal changed
        out, normalised, kinds = clean_text(text, scrub_pii=scrub_pii)
        changed |= normalised
        found.update(kinds)
        return out

    cleaned = dict(row)
    if isinstance(row.get("messages"), list):
        cleaned["messages"] = [{**m, "content": fix(m["content"])} for m in row["messages"]]
    for key in TEXT_FIELDS:
        if isinstance(row.get(key), str):
            cleaned[key] = fix(row[key])
    return cleaned, changed, found


def html_report(report: dict[str, Any]) -> str:
    """The report as one HTML page: counts per reason and the samples."""
    import html

    def rows(counts: dict[str, int]) -> str:
        return (
            "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in counts.items())
            or "<tr><td>-</td><td>0</td></tr>"
        )

    samples = "".join(
        f"<h3>{html.escape(reason)}</h3><ul>"
        + "".join(f"<li>{html.escape(json.dumps(s, ensure_ascii=False))}</li>" for s in items)
        + "</ul>"
        for reason, items in report["samples"].items()
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>curation report</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 8px}</style></head><body>"
        f"<h1>Curation of {html.escape(report['input'])}</h1>"
        f"<p>{report['rows_in']} rows in, {report['rows_out']} out: {report['train_rows']} train, "
        f"{report['eval_rows']} eval{' (stratified by ' + html.escape(report['stratified_by']) + ')' if report['stratified_by'] else ''}</p>"
        f"<h2>Dropped</h2><table>{rows(report['dropped'])}</table>"
        f"<h2>Changed</h2><table>{rows(report['changed'])}</table>"
        f"<h2>PII replaced</h2><table>{rows(report['pii'])}</table>"
        + (f"<h2>Languages detected</h2><table>{rows(report['languages'])}</table>" if report.get("languages") else "")
        + f"<h2>Samples</h2>{samples}</body></html>"
    )


def log_to_mlflow(
    rc: Any, report: dict[str, Any], reports: list[Path], run_name: str, tags: dict[str, str] | None = None
) -> str:
    """One run in experiment `<prefix>data`: the written files and reports as artifacts, each file as an
    `mlflow.data` input tagged with our sha256 of its exact bytes. The run id."""
    import mlflow
    import pandas as pd

    from tuneloop.registry.tracking import experiment_id, file_dataset

    with mlflow.start_run(
        experiment_id=experiment_id(rc.mlflow, rc.settings, Experiment.DATA), run_name=run_name
    ) as run:
        mlflow.log_params({k: str(v) for k, v in report["options"].items()})
        mlflow.log_metrics(
            {
                "rows_in": report["rows_in"],
                "rows_out": report["rows_out"],
                **{f"dropped/{k}": v for k, v in report["dropped"].items()},
                **{f"changed/{k}": v for k, v in report["changed"].items()},
                **{f"pii/{k}": v for k, v in report["pii"].items()},
            }
        )
        if report.get("languages"):
            mlflow.log_metrics({f"language/{k}": v for k, v in report["languages"].items()})
        mlflow.set_tags(
            {
                **(tags or {}),
                RunTag.data_sha256("input"): report["input_sha256"],
                **{RunTag.data_sha256(k): v for k, v in report["output_sha256"].items()},
            }
        )
        for split, file in report["outputs"].items():
            frame = pd.DataFrame(
                [
                    {
                        k: json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
                        for k, v in json.loads(line).items()
                    }
                    for line in Path(file).read_text(encoding="utf-8").splitlines()
                ]
            )
            if not frame.empty:
                dataset = file_dataset(frame, file, f"{Path(report['input']).stem}-{split}")
                mlflow.log_input(dataset, context=split, tags={"sha256": report["output_sha256"][split]})
            mlflow.log_artifact(file, artifact_path="data")
        for file in reports:
            mlflow.log_artifact(str(file))
        return str(run.info.run_id)
