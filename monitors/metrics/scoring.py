"""Score prediction/reference pairs with any set of metrics, and recompute them on resamples.

`--metrics rouge,bleu,chrf,f1,accuracy,exact_match` expands `rouge` to rouge1/rouge2/rougeL/rougeLsum
and `f1` to f1_macro/f1_micro. ROUGE, F1, accuracy and exact match are fractions in [0, 1]; BLEU and
chrF are on sacrebleu's 0-100 scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# By full name, not `from tuneloop.monitors.metrics import ...`: the package's __init__ imports this module.
import tuneloop.monitors.metrics.classification as classification  # noqa: PLR0402
import tuneloop.monitors.metrics.text as text  # noqa: PLR0402
from tuneloop.errors import UsageError

PAIR_METRICS = (*text.ROUGE_TYPES, "bleu", "chrf", "f1_macro", "f1_micro", "accuracy", "exact_match")
GROUPS = {"rouge": text.ROUGE_TYPES, "f1": ("f1_macro", "f1_micro")}
METRIC_NAMES = frozenset(PAIR_METRICS) | set(GROUPS)


def expand_metrics(names: Sequence[str], allowed: Sequence[str] = PAIR_METRICS) -> list[str]:
    """`rouge` and `f1` expand to their members; unknown names raise one error listing all of them."""
    out: list[str] = []
    unknown = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        members = GROUPS.get(name, (name,))
        if any(m not in allowed for m in members):
            unknown.append(name)
            continue
        out.extend(m for m in members if m not in out)
    if unknown:
        known = ", ".join([*GROUPS, *allowed])
        raise UsageError(f"unknown metric(s): {', '.join(unknown)}", hint=f"choose from: {known}")
    if not out:
        raise UsageError("no metrics given", hint="e.g. `--metrics rouge,bleu,chrf`")
    return out


@dataclass(frozen=True)
class ScoreOptions:
    rouge_stemming: bool = True
    rouge_tokenizer: str = "default"  # or "unicode" (any script; see text.UnicodeTokenizer)


@dataclass
class PairScores:
    values: dict[str, float]
    per_example: dict[str, list[float]]  # metrics that are means of per-pair values
    signatures: dict[str, str] = field(default_factory=dict)
    count: int = 0


def score_pairs(
    predictions: Sequence[str],
    references: Sequence[str],
    metrics: Sequence[str],
    options: ScoreOptions = ScoreOptions(),
) -> PairScores:
    if len(predictions) != len(references):
        raise UsageError(
            f"{len(predictions)} predictions but {len(references)} references", hint="give one reference per prediction"
        )
    if not predictions:
        raise UsageError("no prediction/reference pairs to score", hint="give at least one pair")
    wanted = expand_metrics(metrics)
    values: dict[str, float] = {}
    per_example: dict[str, list[float]] = {}
    signatures: dict[str, str] = {}
    if any(m in text.ROUGE_TYPES for m in wanted):
        rouge = text.rouge_per_pair(
            predictions, references, use_stemmer=options.rouge_stemming, tokenizer=options.rouge_tokenizer
        )
        per_example.update({m: rouge[m] for m in text.ROUGE_TYPES if m in wanted})
    if "exact_match" in wanted:
        per_example["exact_match"] = classification.exact_match_per_pair(predictions, references)
    if "accuracy" in wanted:
        per_example["accuracy"] = [
            float(classification.normalise_label(p) == classification.normalise_label(r))
            for p, r in zip(predictions, references, strict=True)
        ]
    for name in wanted:
        if name in per_example:
            values[name] = sum(per_example[name]) / len(per_example[name])
        else:
            values[name], signature = corpus_value(name, predictions, references)
            if signature:
                signatures[name] = signature
    if "accuracy" in wanted:  # the same number, from scikit-learn itself
        values["accuracy"] = classification.accuracy(predictions, references)
    return PairScores(
        values={m: values[m] for m in wanted}, per_example=per_example, signatures=signatures, count=len(predictions)
    )


def corpus_value(name: str, predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """A corpus-level metric (not a mean over pairs): (value, sacrebleu signature or "")."""
    if name == "bleu":
        result = text.corpus_bleu(predictions, references)
        return result.score, result.signature
    if name == "chrf":
        result = text.corpus_chrf(predictions, references)
        return result.score, result.signature
    if name in ("f1_macro", "f1_micro"):
        return classification.f1(predictions, references, name.removeprefix("f1_")), ""
    raise UsageError(f"`{name}` is not a corpus metric")
