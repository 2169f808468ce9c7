"""Names shared by several packages: metrics, adapter methods, MLflow tag keys, experiments, and the
one parser of model references (`NAME@ALIAS`, `NAME:VERSION`).

Keep these strings stable: they are stored in MLflow and in tuneloop's database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from tuneloop.errors import InvalidInput


class Metric(StrEnum):
    """Metric names that evaluation writes, monitors compute and gates read."""

    PERPLEXITY = "perplexity"
    ROUGE1 = "rouge1"
    ROUGE2 = "rouge2"
    ROUGE_L = "rougeL"
    ROUGE_LSUM = "rougeLsum"
    BLEU = "bleu"
    CHRF = "chrf"
    F1_MACRO = "f1_macro"
    F1_MICRO = "f1_micro"
    ACCURACY = "accuracy"
    EXACT_MATCH = "exact_match"
    WIN_RATE = "win_rate"
    LATENCY_MS = "latency_ms"
    EVAL_LOSS = "eval_loss"


# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({Metric.PERPLEXITY, Metric.LATENCY_MS, Metric.EVAL_LOSS})

# What shadow evaluation compares on the same live prompts (challenger minus champion): each is written on
# the challenger's version as `shadow_<name>_delta` with `_lo` and `_hi` (its paired-bootstrap interval).
SHADOW_COMPARED = ("refusal_rate", "output_words", "non_letter_share", "language_share", "rougeL", "accuracy")
SHADOW_PAIRS = "shadow_pairs"  # every (live, shadow) pair compared
SHADOW_COUNTS = ("shadow_rougeL_pairs", "shadow_accuracy_pairs")  # pairs whose live record has a reference / label
SHADOW_AGREEMENT = ("shadow_agreement_exact_match", "shadow_agreement_rougeL")  # challenger's answer vs champion's
SHADOW_METRICS = frozenset(
    [SHADOW_PAIRS, *SHADOW_COUNTS, *SHADOW_AGREEMENT]
    + [f"shadow_{name}_delta{end}" for name in SHADOW_COMPARED for end in ("", "_lo", "_hi")]
)


def known_metrics() -> list[str]:
    """Every metric name a version may carry and a gate may read."""
    return [m.value for m in Metric] + sorted(SHADOW_METRICS)


def is_shadow_metric(name: str) -> bool:
    return name in SHADOW_METRICS


class AdapterMethod(StrEnum):
    QLORA = "qlora"
    LORA = "lora"
    DPO = "dpo"
    PROMPT_TUNING = "prompt_tuning"
    HYBRID = "hybrid"
    FULL = "full"


class ModelKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"


class Alias:
    CHAMPION = "champion"
    CHALLENGER = "challenger"


_ALIAS_TEXT = re.compile(r"[\w.-]+")
REF_HINT = "write NAME@ALIAS or NAME:VERSION, e.g. support-qlora@champion or support-qlora:3"


def names_a_version(text: str) -> bool:
    """Whether `text` is written as a version reference (NAME@ALIAS or NAME:VERSION) rather than a NAME."""
    return "@" in text or ":" in text


@dataclass(frozen=True)
class ModelRef:
    """One registered version, named by an alias it holds or by its number."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str, *, what: str = "model") -> ModelRef:
        """`NAME@ALIAS` or `NAME:VERSION` (also `NAME:v3`); InvalidInput naming `what` otherwise."""
        if "@" in text:
            name, alias = text.split("@", 1)
            if name and _ALIAS_TEXT.fullmatch(alias):
                return cls(name, alias=alias)
        elif ":" in text:
            name, version = text.rsplit(":", 1)
            version = version.removeprefix("v")
            if name and version.isdigit():
                return cls(name, version=int(version))
        raise InvalidInput(f"`{what}` must be NAME@ALIAS or NAME:VERSION, not `{text}`", hint=REF_HINT)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}:{self.version}"


class Tag:
    """MLflow tag keys written by tuneloop (registered models and model versions)."""

    PREFIX = "tuneloop."  # every key below starts with it (a run's params drop it)
    BASE_PREFIX = "tuneloop.base."  # the BASE_* keys: the base an adapter was trained on
    KIND = "tuneloop.kind"
    CONTENT_DIGEST = "tuneloop.content_digest"
    SOURCE = "tuneloop.source"
    SOURCE_DIGEST = "tuneloop.source_digest"
    ARCHITECTURE = "tuneloop.architecture"
    PARAMETERS = "tuneloop.parameters"
    LICENSE = "tuneloop.license"
    ARTIFACT_URI = "tuneloop.artifact_uri"
    BASE_NAME = "tuneloop.base.name"
    BASE_VERSION = "tuneloop.base.version"
    BASE_ARTIFACT_URI = "tuneloop.base.artifact_uri"
    BASE_DIGEST = "tuneloop.base.digest"
    METHOD = "tuneloop.method"
    PARENT_ADAPTER = "tuneloop.parent_adapter"  # NAME:VERSION an adapter was trained on top of (DPO after SFT)
    DATASET_DIGESTS = "tuneloop.dataset_digests"
    TRAINING_RUN_ID = "tuneloop.training_run_id"
    GATE_POLICY = "tuneloop.gate_policy"
    GATE_VERDICT = "tuneloop.gate_verdict"  # JSON: the last promotion decision on a version (alias, outcome, checks)
    METRIC_PREFIX = "tuneloop.metric."
    AUDIT_ENTRY = "tuneloop.audit.entry_id"
    SERVING = "tuneloop.serving"  # JSON: the latest serving figures of a version (`tuneloop serve`'s serving run)


class TraceTag:
    """Tags of a served request's trace (the record id finds the trace; `pair_of` a shadow's live record)."""

    RECORD = "tuneloop.record"
    MODEL = "tuneloop.model"
    VERSION = "tuneloop.version"
    ALIAS = "tuneloop.alias"
    KIND = "tuneloop.kind"
    PAIR_OF = "tuneloop.pair_of"
    USER = "tuneloop.user"  # the record's hash of the request's `user`, never the value


class SpanAttribute:
    """Attributes of a served request's span, beside MLflow's own (inputs, outputs, token usage)."""

    VERSION = "tuneloop.version"  # the version that answered, as a number
    FINISH_REASON = "tuneloop.finish_reason"  # stop, length or cancelled
    SAMPLING = "tuneloop.sampling"  # the sampling parameters the answer was generated with


class Experiment:
    """Suffixes of the MLflow experiments tuneloop creates (prefixed by `settings.experiment_prefix`)."""

    REGISTRY = "registry"
    AUDIT = "audit"
    TRAINING = "training"
    EVALUATION = "evaluation"
    HUMAN_EVAL = "human-eval"
    MONITORS = "monitors"
    ALERTS = "alerts"
    DATA = "data"


def serve_experiment(name: str) -> str:
    """The suffix of a served model's experiment: its served requests' traces and its servers' runs."""
    return f"serve-{name}"


SERVE_EXPERIMENT_NOTE = (
    "Production of `{name}`: every served request (or `serve.trace_share` of them) as a trace, with the version "
    "that answered, its record id and token usage (Traces tab); one run per `tuneloop serve` process with "
    "requests, completion tokens/s, p50/p95 latency, errors and 429s per version (`v<N>/...`). Assessments made "
    "on a trace come back to tuneloop as the record's feedback (a trusted reviewer's only, for training)."
)

# What each experiment holds: its description in the MLflow UI.
EXPERIMENT_NOTES = {
    Experiment.REGISTRY: "One run per base model imported or model registered without training: the logged model "
    "behind each registry version.",
    Experiment.AUDIT: "One run per alias move (promotion, rollback, a move made outside tuneloop), mirrored from "
    "tuneloop's append-only audit trail: who moved which alias from which version to which, and the gates it passed.",
    Experiment.TRAINING: "One run per fine-tuning: the recipe (recipe.json, params), its data (inputs with sha256), "
    "the loss curve and throughput per step; the registered version names its run.",
    Experiment.EVALUATION: "One run per evaluation of a version on a suite: metrics per task, the eval table of every "
    "prediction, and the comparison with a baseline when one is given.",
    Experiment.HUMAN_EVAL: "Blinded A/B reviews: the exported pairs, the ratings and the win rate with its interval.",
    Experiment.MONITORS: "One run per monitor window judged: drift checks with their p-values and the verdict page.",
    Experiment.ALERTS: "One run per alert raised by an alert rule: the windows that fired it and what it triggered.",
    Experiment.DATA: "One run per curated or synthetic data set: the files (datasets with sha256) and the report of "
    "every dropped or changed row.",
}


# A serving run's figures, per version and interval: `v<N>/<figure>` (the MLflow UI groups charts by prefix).
SERVING_FIGURES = (
    "requests",  # answers sent to callers in the interval (live and canary)
    "completion_tokens_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "errors",  # requests that failed on the server's side
    "rejected_429",  # requests refused because the version's queue was full
    "shadow_answers",  # answers generated for shadow comparison, seen by nobody
    "requests_total",  # since the server started
)


def serving_metric(version: int, figure: str) -> str:
    return f"v{version}/{figure}"


def parse_serving_metric(key: str) -> tuple[int, str] | None:
    """(version, figure) of a serving run's metric key, or None for the server-wide ones."""
    head, _, figure = key.partition("/")
    if head.startswith("v") and head[1:].isdigit() and figure in SERVING_FIGURES:
        return int(head[1:]), figure
    return None


class EvalTag:
    """Tags of an evaluation run (and RUN_ID on the model version: its latest eval run)."""

    MODEL = "tuneloop.eval.model"  # NAME:VERSION
    SUITE = "tuneloop.eval.suite"
    SUITE_DIGEST = "tuneloop.eval.suite_digest"
    RUN_ID = "tuneloop.eval.run_id"
    KIND = "tuneloop.eval.kind"
    METHOD = "tuneloop.eval.method"
    DATA_PREFIX = "tuneloop.eval.data."

    @staticmethod
    def data_sha256(task: str) -> str:
        return f"{EvalTag.DATA_PREFIX}{task}.sha256"


class RunTag:
    """Tags tuneloop writes on the MLflow runs of training, data, monitors, alerts, reviews and retrains."""

    PRECISION = "tuneloop.precision"
    PRECISION_REASON = "tuneloop.precision_reason"
    GRADIENT_CHECKPOINTING = "tuneloop.gradient_checkpointing"
    GRADIENT_CHECKPOINTING_REASON = "tuneloop.gradient_checkpointing_reason"
    BASE = "tuneloop.base"  # NAME:VERSION of the base a training run started from
    WORLD_SIZE = "tuneloop.world_size"
    DATA_GENERATOR = "tuneloop.data.generator"
    DATA_TEMPLATE = "tuneloop.data.template"
    MONITOR = "tuneloop.monitor"
    MONITOR_MODEL = "tuneloop.monitor.model"
    REVIEW_A = "tuneloop.review.a"
    REVIEW_B = "tuneloop.review.b"
    REVIEW_TASK = "tuneloop.review.task"
    SERVE_MODEL = "tuneloop.serve.model"  # the model a serving run's server serves
    SERVE_ADDRESS = "tuneloop.serve.address"  # host:port (and pid) of that server
    SHADOW_CHALLENGER = "tuneloop.shadow.challenger"  # NAME:VERSION judged on live prompts (`eval shadow`)
    SHADOW_CHAMPION = "tuneloop.shadow.champion"  # NAME:VERSION whose live answers it was compared with
    RETRAIN_ID = "tuneloop.retrain.id"
    RETRAIN_TRIGGER = "tuneloop.retrain.trigger"
    RETRAIN_CHAMPION = "tuneloop.retrain.champion"
    RETRAIN_DECISION = "tuneloop.retrain.decision"
    ALERT_ID = "tuneloop.alert.id"
    ALERT_RULE = "tuneloop.alert.rule"
    ALERT_MONITOR = "tuneloop.alert.monitor"
    ALERT_MODEL = "tuneloop.alert.model"
    ALERT_SEVERITY = "tuneloop.alert.severity"
    ALERT_STATUS = "tuneloop.alert.status"
    ALERT_RUN_ID = "tuneloop.alert.run_id"  # on a challenger version: the alert run that triggered it
    AUDIT_PREFIX = "tuneloop.audit."  # + model, alias, kind, from_version, to_version, forced, actor, reason, at

    @staticmethod
    def data_sha256(context: str) -> str:
        """The sha256 of a data file a run read or wrote (`training`, `evaluation`, `input`, ...)."""
        return f"tuneloop.data.{context}.sha256"

    @staticmethod
    def monitor(key: str) -> str:
        return f"{RunTag.MONITOR}.{key}"
