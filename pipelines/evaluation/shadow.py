"""Shadow evaluation (`tuneloop eval shadow NAME`): the challenger judged on the champion's own live prompts.

Over every request the champion answered live and the challenger answered in shadow (records `kind:
shadow`, `pair_of` the live record), each answer is described — refusal (0/1), words, share of non-letter
characters, whether it is in the prompt's language (`descriptors.language`) — and, where feedback on the
live record carries a reference answer or a label, scored against it (ROUGE-L, label accuracy). A rating
is left out: it belongs to the answer the user saw.

Each comparison is challenger minus champion on the same pairs, with a paired-bootstrap interval, and is
written on the challenger's version (`shadow_<name>_delta`, `_lo`, `_hi`, and `shadow_pairs`) where gates
read it: `shadow_refusal_rate_delta_lo <= 0.01` refuses a challenger that is confidently worse by more than
a point. Agreement between the two answers (exact match, ROUGE-L) is written too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.errors import InvalidInput, NotFound
from tuneloop.monitors.drift.descriptors import Vocabulary, describe, language
from tuneloop.monitors.metrics.classification import exact_match_per_pair, normalise_label
from tuneloop.monitors.metrics.stats import paired_mean_difference
from tuneloop.monitors.metrics.text import rouge_per_pair
from tuneloop.names import SHADOW_COUNTS, SHADOW_PAIRS, Alias
from tuneloop.registry.client import RegistryClient
from tuneloop.store.records import ShadowPair

DESCRIBED = {"refusal_rate": "refusal", "output_words": "word_count", "non_letter_share": "non_letter_share"}


@dataclass(frozen=True)
class ShadowComparison:
    name: str  # refusal_rate, output_words, non_letter_share, language_share, rougeL (vs references), accuracy
    pairs: int
    champion: float
    challenger: float
    delta: float  # challenger - champion
    low: float
    high: float


@dataclass
class ShadowEvaluation:
    model: str
    champion_version: int
    challenger_version: int
    pairs: int
    confidence: float
    comparisons: list[ShadowComparison]
    agreement: dict[str, float]  # exact_match, rougeL: the challenger's answer against the champion's
    skipped: list[str] = field(default_factory=list)
    run_id: str | None = None  # its run in the evaluation experiment, once recorded

    def metrics(self) -> dict[str, float]:
        """What is written on the challenger's version."""
        out = {SHADOW_PAIRS: float(self.pairs)}
        for c in self.comparisons:
            out |= {f"shadow_{c.name}_delta{end}": v for end, v in (("", c.delta), ("_lo", c.low), ("_hi", c.high))}
            if f"shadow_{c.name}_pairs" in SHADOW_COUNTS:  # compared on the pairs with feedback only
                out[f"shadow_{c.name}_pairs"] = float(c.pairs)
        return out | {f"shadow_agreement_{k}": v for k, v in self.agreement.items()}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"metrics": self.metrics()}


def evaluate_shadow(
    rc: RegistryClient,
    model: str,
    *,
    challenger: int | None = None,
    champion: int | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    record: bool = True,
) -> ShadowEvaluation:
    """Compare `challenger` (default: the version holding the traffic policy's shadow alias, or
    `challenger`) with `champion` (default: the version holding `champion`) on their paired answers; with
    `record`, write the results on the challenger's version."""
    champion_version = champion if champion is not None else _holder(rc, model, Alias.CHAMPION)
    if challenger is None:
        shadow = rc.stores.traffic.get(model).policy.shadow
        challenger = _holder(rc, model, shadow.alias if shadow is not None else Alias.CHALLENGER)
    if challenger == champion_version:
        raise InvalidInput(
            f"v{challenger} of `{model}` would be compared with itself",
            hint="name the versions: --champion VERSION (whose live answers) --challenger VERSION (whose shadow answers)",
        )
    pairs = rc.stores.records.shadow_pairs(model, champion_version, challenger)
    if not pairs:
        raise InvalidInput(
            f"no request of `{model}` was answered by champion v{champion_version} and shadowed by v{challenger}",
            hint=f"turn shadowing on (`tuneloop traffic set {model} FILE` with `shadow: {{alias: challenger, "
            "share: 0.25}`) and let the server answer requests first",
        )
    comparisons, agreement, skipped = compare_pairs(pairs, resamples=resamples, confidence=confidence, seed=seed)
    result = ShadowEvaluation(
        model, champion_version, challenger, len(pairs), confidence, comparisons, agreement, skipped
    )
    if record:
        from tuneloop.registry.gates import record_metrics

        result.run_id = _log_run(rc, result)
        record_metrics(rc, model, challenger, result.metrics())
    return result


def _log_run(rc: RegistryClient, result: ShadowEvaluation) -> str:
    """A run in the evaluation experiment beside the offline evals: the metrics, and the comparison as JSON."""
    import time

    from mlflow.entities import Metric, Param

    from tuneloop.names import Experiment, RunTag
    from tuneloop.registry.tracking import experiment_id

    challenger = f"{result.model}:{result.challenger_version}"
    champion = f"{result.model}:{result.champion_version}"
    run = rc.mlflow.create_run(
        experiment_id(rc.mlflow, rc.settings, Experiment.EVALUATION),
        run_name=f"shadow {challenger} vs v{result.champion_version}",
        tags={RunTag.SHADOW_CHALLENGER: challenger, RunTag.SHADOW_CHAMPION: champion},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    try:
        rc.mlflow.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in result.metrics().items()],
            params=[Param("champion", champion), Param("challenger", challenger), Param("pairs", str(result.pairs))],
        )
        rc.mlflow.log_dict(run_id, result.as_dict(), "shadow_comparison.json")
    except Exception:
        rc.mlflow.set_terminated(run_id, "FAILED")  # never left RUNNING
        raise
    rc.mlflow.set_terminated(run_id)
    return run_id


def compare_pairs(
    pairs: list[ShadowPair], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[list[ShadowComparison], dict[str, float], list[str]]:
    """Over `pairs`: the comparisons, the agreement of the two answers, and what could not be compared."""
    live = describe([p.live_output for p in pairs], Vocabulary(frozenset()))
    shadow = describe([p.shadow_output for p in pairs], Vocabulary(frozenset()))
    per_pair = {name: (live[column], shadow[column]) for name, column in DESCRIBED.items()}
    asked = [language(p.prompt) for p in pairs]
    per_pair["language_share"] = (  # answered in the language of the prompt
        [float(language(p.live_output) == lang) for p, lang in zip(pairs, asked, strict=True)],
        [float(language(p.shadow_output) == lang) for p, lang in zip(pairs, asked, strict=True)],
    )
    skipped = []
    referenced = [p for p in pairs if p.reference]
    if referenced:
        references = [p.reference or "" for p in referenced]
        per_pair["rougeL"] = (
            rouge_per_pair([p.live_output for p in referenced], references)["rougeL"],
            rouge_per_pair([p.shadow_output for p in referenced], references)["rougeL"],
        )
    else:
        skipped.append("rougeL: no live record of these pairs has feedback with a reference answer")
    labelled = [p for p in pairs if p.label]
    if labelled:
        per_pair["accuracy"] = (
            [_correct(p.live_prediction or p.live_output, p.label or "") for p in labelled],
            [_correct(p.shadow_prediction or p.shadow_output, p.label or "") for p in labelled],
        )
    else:
        skipped.append("accuracy: no live record of these pairs has feedback with a label")
    comparisons = []
    for name, (champion_values, challenger_values) in per_pair.items():
        d = paired_mean_difference(
            champion_values, challenger_values, resamples=resamples, confidence=confidence, seed=seed
        )
        comparisons.append(ShadowComparison(name, len(champion_values), d.a, d.b, d.delta, d.low, d.high))
    agreement = {
        "exact_match": _mean(exact_match_per_pair([p.shadow_output for p in pairs], [p.live_output for p in pairs])),
        "rougeL": _mean(rouge_per_pair([p.shadow_output for p in pairs], [p.live_output for p in pairs])["rougeL"]),
    }
    return comparisons, agreement, skipped


def _correct(answer: str, label: str) -> float:
    return float(normalise_label(answer) == normalise_label(label))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _holder(rc: RegistryClient, model: str, alias: str) -> int:
    holder = (rc.registered_model(model).aliases or {}).get(alias)
    if holder is None:
        raise NotFound(
            f"`{model}` has no `{alias}`: shadow evaluation compares the champion with a challenger",
            hint=f"set it with `tuneloop models promote {model} VERSION --alias {alias}`, or pass --challenger VERSION",
        )
    return int(holder)
