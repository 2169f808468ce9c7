"""Names shared by several packages: metrics, adapter methods, MLflow tag keys, experiments.

Keep these strings stable: they are stored in MLflow and in tuneloop's database.
"""

from __future__ import annotations

from enum import StrEnum


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


class AdapterMethod(StrEnum):
    QLORA = "qlora"
    LORA = "lora"
    DPO = "dpo"
    PROMPT_TUNING = "prompt_tuning"
    HYBRID = "hybrid"


class ModelKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"


class Alias:
    CHAMPION = "champion"
    CHALLENGER = "challenger"


class Tag:
    """MLflow tag keys written by tuneloop (registered models and model versions)."""

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
    METRIC_PREFIX = "tuneloop.metric."
    AUDIT_ENTRY = "tuneloop.audit.entry_id"


class Experiment:
    """Suffixes of the MLflow experiments tuneloop creates (prefixed by `settings.experiment_prefix`)."""

    REGISTRY = "registry"
    AUDIT = "audit"
