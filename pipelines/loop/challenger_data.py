"""What a challenger learns from: the champion's training set plus production records that carry
human feedback fit for training — a reference answer, a corrected label, or an output whose rating
was approved (at or above the loop's `min_rating`). The model's own unreviewed outputs never train.

Steps: read the champion's stored training file (verified by digest), turn each reviewed record into a
row of the same format, hold out a deterministic share of the new rows (by record id) for
evaluation, validate, and drop exact duplicates (and training rows that repeat a held-out prompt, so
the held-out task measures generalisation, not recall). Production text is normalised and scrubbed of
PII (e-mails, phones, cards, IBANs, IPs) first, as `tuneloop data curate` does. When the new rows outnumber the old, the
champion's rows are repeated until they make `champion_share` of the set, so the challenger learns the
new distribution without forgetting the one the champion was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput
from tuneloop.pipelines.data import formats as data_io
from tuneloop.rowfiles import answer_of, prompt_of, read_rows, text_of, write_jsonl
from tuneloop.store import Stores


@dataclass
class CuratedData:
    train: Path
    holdout: Path | None
    eval: Path | None
    counts: dict[str, int] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def reviewed_examples(
    stores: Stores, model: str, min_rating: float, *, labels_train: bool = True
) -> list[dict[str, str]]:
    """[{id, prompt, answer, why}] of the model's production records whose feedback makes a training answer.

    A label is a training answer only for a model whose training answers are labels (`labels_train`); for
    an answer model it stays what it is — evidence for the monitor's quality checks — and never becomes an
    assistant turn (its record still trains through a reference answer or an approved rating)."""
    out = []
    for row in stores.records.reviewed(model):
        if row.reference and row.reference.strip():
            out.append({"id": row.id, "prompt": row.prompt, "answer": row.reference, "why": "reference"})
        elif labels_train and row.label and row.label.strip():
            out.append({"id": row.id, "prompt": row.prompt, "answer": row.label, "why": "label"})
        elif row.rating is not None and row.rating >= min_rating and row.output.strip():
            out.append({"id": row.id, "prompt": row.prompt, "answer": row.output, "why": "approved"})
        elif row.label and row.label.strip():
            out.append({"id": row.id, "prompt": row.prompt, "answer": "", "why": "label kept for quality checks"})
    return out


MAX_LABEL_WORDS = 4  # a training answer this short, from a small set, is a label
MAX_LABELS = 50


def answers_are_labels(rows: list[dict[str, Any]]) -> bool:
    """Whether a training set teaches labels (intents, classes) rather than answers: every answer is a few
    words and they come from a small set that repeats."""
    answers = [answer_of(row) for row in rows]
    if not answers or any(a is None for a in answers):
        return False
    distinct = {str(a).strip() for a in answers}
    return all(len(str(a).split()) <= MAX_LABEL_WORDS for a in distinct) and len(distinct) <= min(
        MAX_LABELS, max(1, len(answers) // 2)
    )


def build(
    rc: Any,
    model: str,
    champion_version: int,
    folder: Path,
    *,
    min_rating: float,
    holdout: float,
    champion_share: float = 0.0,
    near_threshold: float | None = 0.8,
    holdout_limit: int | None = None,
) -> CuratedData:
    from tuneloop.monitors.references import stored_data_file

    folder.mkdir(parents=True, exist_ok=True)
    champion_file, _ = stored_data_file(rc, model, champion_version, "train")
    champion_rows = [row for _, row in read_rows(champion_file) if isinstance(row, dict)]
    if not champion_rows:
        raise InvalidInput(
            f"the champion {model}:{champion_version} has an empty training file", hint="retrain it by hand"
        )
    fmt = data_io.detect_format(champion_rows[0])
    if fmt in (None, "preference"):
        raise InvalidInput(
            f"cannot add production examples to {fmt or 'unrecognised'} training rows",
            hint="retraining extends chat, instruction or completion data",
        )
    labels_train = answers_are_labels(champion_rows)
    examples = reviewed_examples(rc.stores, model, min_rating, labels_train=labels_train)
    labels_kept = sum(e["why"] == "label kept for quality checks" for e in examples)
    reviewed, pii_found = _scrubbed([e for e in examples if e["answer"]])
    # The lowest shares are held out, at most `holdout_limit` of them; the rest train.
    by_share = sorted(reviewed, key=lambda e: _share(e["id"]))
    held_ids = {e["id"] for e in by_share if _share(e["id"]) < holdout}
    if holdout_limit is not None:
        held_ids = set([e["id"] for e in by_share if e["id"] in held_ids][:holdout_limit])
    held = [e for e in reviewed if e["id"] in held_ids]
    learn = [e for e in reviewed if e["id"] not in held_ids]
    held_prompts = {_norm(e["prompt"]) for e in held}
    system = _system_turn(champion_rows[0]) if fmt == "chat" else None

    held_rows = [_as_row(e, fmt, system) for e in held]
    kept: dict[str, list[dict[str, Any]]] = {"champion": [], "new": []}
    seen: set[str] = set()
    dropped_dupes, dropped_leaks = 0, 0
    for source, row in [("champion", r) for r in champion_rows] + [("new", _as_row(e, fmt, system)) for e in learn]:
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        if key in seen:
            dropped_dupes += 1
            continue
        if _norm(prompt_of(row) or "") in held_prompts:
            dropped_leaks += 1
            continue
        seen.add(key)
        kept[source].append(row)
    near_dropped, near_leaks = 0, 0
    if near_threshold is not None and kept["new"]:
        kept["new"], near_dropped, near_leaks = _drop_near_copies(
            kept["new"], kept["champion"], held_rows, near_threshold
        )
    repeats = _repeats(len(kept["champion"]), len(kept["new"]), champion_share)
    rows = kept["champion"] * repeats + kept["new"]
    train = write_jsonl(folder / "train.jsonl", rows)
    data_io.load(train, fmt)  # validation: every row must be usable, or one error lists the bad ones
    holdout_path = write_jsonl(folder / "holdout.jsonl", held_rows) if held else None
    eval_path = None
    try:
        eval_path, _ = stored_data_file(rc, model, champion_version, "eval")
    except InvalidInput:
        pass  # the champion had no eval split; the suite and the held-out task still judge
    from tuneloop.digest import file_sha256

    counts = {
        "champion_rows": len(champion_rows),
        "reviewed_records": len(reviewed),
        "new_training_rows": len(learn),
        "held_out_rows": len(held),
        "duplicates_dropped": dropped_dupes,
        "held_out_prompts_dropped": dropped_leaks,
        "near_duplicates_dropped": near_dropped,
        "near_held_out_dropped": near_leaks,
        "champion_repeats": repeats,
        "training_rows": len(rows),
        "labels_kept_for_quality": labels_kept,
        "champion_answers_are_labels": int(labels_train),
    }
    counts |= {f"pii_{kind}": n for kind, n in sorted(pii_found.items())}
    for why in ("reference", "label", "approved"):
        counts[f"from_{why}"] = sum(e["why"] == why for e in learn)
    counts["new_rows_kept"] = len(kept["new"])
    digests = {"train": "sha256:" + file_sha256(train)}
    if holdout_path:
        digests["holdout"] = "sha256:" + file_sha256(holdout_path)
    return CuratedData(train=train, holdout=holdout_path, eval=eval_path, counts=counts, digests=digests)


def _drop_near_copies(
    new: list[dict[str, Any]], champion: list[dict[str, Any]], held: list[dict[str, Any]], threshold: float
) -> tuple[list[dict[str, Any]], int, int]:
    """New rows that near-duplicate (Jaccard of word 3-grams ≥ threshold, as `tuneloop data curate`) a held-out
    row — a leak into the held-out task — or a champion row or an earlier new row — no new information — are
    dropped. (kept new rows, near duplicates dropped, near copies of held-out rows dropped)"""
    from tuneloop.pipelines.data.cleaning.dedup import near_duplicates

    texts = [text_of(r) for r in held + champion + new]
    twins = near_duplicates(texts, threshold)[len(held) + len(champion) :]
    kept = [row for row, twin in zip(new, twins, strict=True) if twin is None]
    leaks = sum(twin is not None and twin < len(held) for twin in twins)
    return kept, len(new) - len(kept) - leaks, leaks


def _repeats(champion: int, new: int, share: float) -> int:
    """How many copies of the champion's rows make them at least `share` of the training rows."""
    import math

    if champion == 0 or share <= 0 or new == 0:
        return 1
    return max(1, math.ceil(share * new / ((1 - share) * champion)))


def _scrubbed(examples: list[dict[str, str]]) -> tuple[list[dict[str, str]], Counter[str]]:
    """Production text normalised and scrubbed of PII (the `tuneloop data curate` normaliser) before it trains."""
    from tuneloop.pipelines.data.cleaning.curate import clean_text

    found: Counter[str] = Counter()
    out = []
    for e in examples:
        prompt, _, in_prompt = clean_text(e["prompt"])
        answer, _, in_answer = clean_text(e["answer"])
        found.update(in_prompt + in_answer)
        out.append({**e, "prompt": prompt, "answer": answer})
    return out, found


def _share(record_id: str) -> float:
    """A stable number in [0, 1) per record: the same record is always held out, or never."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 16**8


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _system_turn(row: dict[str, Any]) -> dict[str, str] | None:
    messages = row.get("messages")
    if (
        isinstance(messages, list)
        and messages
        and isinstance(messages[0], dict)
        and messages[0].get("role") == "system"
    ):
        return {"role": "system", "content": str(messages[0].get("content", ""))}
    return None


def _as_row(example: dict[str, str], fmt: str, system: dict[str, str] | None) -> dict[str, Any]:
    if fmt == "chat":
        turns = [system] if system else []
        return {
            "messages": [
                *turns,
                {"role": "user", "content": example["prompt"]},
                {"role": "assistant", "content": example["answer"]},
            ]
        }
    if fmt == "instruction":
        return {"instruction": example["prompt"], "response": example["answer"]}
    return {"prompt": example["prompt"], "completion": example["answer"]}
