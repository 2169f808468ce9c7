"""Gate policies: thresholds a version must meet before it may take an alias.

A gate reads `METRIC OP THRESHOLD`, where THRESHOLD is a number or a reference with an optional
offset or factor: `accuracy >= 0.8`, `rougeL >= champion - 0.01`, `perplexity <= base * 1.05`.
A reference names an alias (its current holder's value) or `base` (the adapter's base model
version). A relative gate whose alias has no holder compares with the base; with no base value
either it is skipped, and the skip is recorded.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuneloop.errors import ConfigError
from tuneloop.names import SHADOW_PAIRS, Alias, Tag, is_shadow_metric, known_metrics
from tuneloop.registry import descriptions
from tuneloop.registry.version_metrics import metrics_of
from tuneloop.schemas import GateCheck

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tuneloop.registry.client import RegistryClient
    from tuneloop.store.base import Transaction

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GATE = re.compile(
    rf"^\s*(?P<metric>[A-Za-z_]\w*)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<number>{_NUMBER})|(?P<ref>[A-Za-z_][\w-]*)\s*(?:(?P<arith>[-+*])\s*(?P<operand>{_NUMBER}))?)\s*$"
)


@dataclass(frozen=True)
class Gate:
    """`METRIC OP NUMBER`, or `METRIC OP ALIAS [ARITH OPERAND]`: a threshold relative to the alias's value."""

    text: str
    metric: str
    op: str
    number: float | None  # the absolute threshold; None for a relative one
    ref: str | None  # the alias a relative threshold reads
    arith: str | None  # +, - or *
    operand: float | None

    def threshold_from(self, ref_value: float) -> float:
        if self.arith == "+":
            return ref_value + (self.operand or 0.0)
        if self.arith == "-":
            return ref_value - (self.operand or 0.0)
        if self.arith == "*":
            return ref_value * (self.operand or 1.0)
        return ref_value


def parse_policy(gates: list[str]) -> list[Gate]:
    """Parse every gate, collecting all problems into one ConfigError."""
    parsed, problems = [], []
    allowed = ", ".join(known_metrics())
    for text in gates:
        match = _GATE.match(text)
        if not match:
            problems.append(
                f"`{text}` is not a gate; write `METRIC OP NUMBER` or `METRIC OP ALIAS [+|-|*] NUMBER`, "
                "e.g. `rougeL >= champion - 0.01`"
            )
            continue
        if match["metric"] not in known_metrics():
            problems.append(f"`{text}` names unknown metric `{match['metric']}`; known metrics: {allowed}")
            continue
        parsed.append(
            Gate(
                text=text.strip(),
                metric=match["metric"],
                op=match["op"],
                number=float(match["number"]) if match["number"] else None,
                ref=match["ref"],
                arith=match["arith"],
                operand=float(match["operand"]) if match["operand"] else None,
            )
        )
    if problems:
        raise ConfigError(
            "invalid gate policy:\n  " + "\n  ".join(problems), hint="fix the gates and set the policy again"
        )
    return parsed


def policy_of(rc: RegistryClient, name: str) -> list[Gate]:
    raw = rc.registered_model(name).tags.get(Tag.GATE_POLICY)
    return parse_policy(json.loads(raw)) if raw else []


def set_policy(rc: RegistryClient, name: str, gates: list[str]) -> list[Gate]:
    parsed = parse_policy(gates)  # validate before storing anything
    rc.registered_model(name)
    rc.mlflow.set_registered_model_tag(name, Tag.GATE_POLICY, json.dumps([g.text for g in parsed]))
    rc.mlflow.update_registered_model(name, description=descriptions.model_description(rc, name))
    return parsed


def evaluate(
    rc: RegistryClient, candidate: ModelVersion, gates: list[Gate], tx: Transaction | None = None
) -> list[GateCheck]:
    """Each gate's check of `candidate`; inside `tx` when the caller holds one (on SQLite a second
    transaction in the same process would wait for it for ever)."""
    values = metrics_of(candidate)
    return [_check(rc, candidate, values, gate, tx) for gate in gates]


def _check(
    rc: RegistryClient, candidate: ModelVersion, values: dict[str, float], gate: Gate, tx: Transaction | None
) -> GateCheck:
    value = values.get(gate.metric)
    shadow = is_shadow_metric(gate.metric)
    if value is None:
        how = f"`tuneloop eval shadow {candidate.name}` on paired traffic" if shadow else "`tuneloop eval`"
        return GateCheck(
            gate=gate.text,
            status="failed",
            reason=f"v{candidate.version} has no `{gate.metric}` result; evaluate it first ({how})",
        )
    if shadow and gate.metric != SHADOW_PAIRS:
        pairs, needed = int(values.get(SHADOW_PAIRS, 0)), min_shadow_pairs(rc, candidate.name, tx)
        if pairs < needed:  # an interval from a handful of pairs would pass a confidently worse challenger
            return GateCheck(
                gate=gate.text,
                status="failed",
                value=value,
                reason=f"v{candidate.version}'s shadow results come from {pairs} (live, shadow) pair(s); "
                f"the traffic policy's `shadow.min_pairs` needs {needed}",
            )
    if gate.number is not None:
        threshold, compared_with = gate.number, "absolute"
    else:
        reference = _reference_value(rc, candidate, gate)
        if isinstance(reference, str):
            return GateCheck(gate=gate.text, status="skipped", value=value, reason=reference)
        ref_value, compared_with = reference
        threshold = gate.threshold_from(ref_value)
    passed = _OPS[gate.op](value, threshold)
    return GateCheck(
        gate=gate.text,
        status="passed" if passed else "failed",
        value=value,
        threshold=threshold,
        compared_with=compared_with,
        reason="" if passed else f"{gate.metric} = {value:g} is not {gate.op} {threshold:g} ({compared_with})",
    )


def min_shadow_pairs(rc: RegistryClient, model: str, tx: Transaction | None = None) -> int:
    """The fewest pairs shadow gates accept: the traffic policy's `shadow.min_pairs` (its default without one)."""
    from tuneloop.traffic import Shadow

    shadow = rc.stores.traffic.get(model, tx).policy.shadow
    return shadow.min_pairs if shadow is not None else int(Shadow.model_fields["min_pairs"].default)


def _reference_value(rc: RegistryClient, candidate: ModelVersion, gate: Gate) -> tuple[float, str] | str:
    """(value, what it came from), or the reason the gate must be skipped."""
    from mlflow.exceptions import MlflowException

    ref = gate.ref or ""
    if ref != "base":
        try:
            holder = rc.mlflow.get_model_version_by_alias(candidate.name, ref)
        except MlflowException:
            holder = None
        if holder is not None:
            held = metrics_of(holder).get(gate.metric)
            if held is not None:
                return held, f"{ref}@v{holder.version}"
            return f"{ref} (v{holder.version}) has no `{gate.metric}` result to compare with"
    base = _base_of(rc, candidate)
    if base is not None:
        held = metrics_of(base).get(gate.metric)
        if held is not None:
            return held, f"base {base.name}@v{base.version}"
    who = "no base model" if ref == "base" else f"no holder of `{ref}`"
    return f"{who} with a `{gate.metric}` result to compare with"


def _base_of(rc: RegistryClient, candidate: ModelVersion) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    tags = candidate.tags or {}
    if Tag.BASE_NAME not in tags:
        return None
    try:
        return rc.mlflow.get_model_version(tags[Tag.BASE_NAME], tags[Tag.BASE_VERSION])
    except MlflowException:
        return None


def record_metrics(rc: RegistryClient, name: str, version: int | str, metrics: dict[str, float]) -> None:
    """Attach evaluation results to a version, where gates read them."""
    unknown = sorted(set(metrics) - set(known_metrics()))
    if unknown:
        raise ConfigError(
            f"unknown metric names: {', '.join(unknown)}", hint="known metrics: " + ", ".join(known_metrics())
        )
    rc.model_version(name, version)
    for metric, value in metrics.items():
        rc.mlflow.set_model_version_tag(name, str(version), Tag.METRIC_PREFIX + metric, repr(float(value)))
    champion = rc.registered_model(name).aliases.get(Alias.CHAMPION)
    descriptions.refresh(rc, name, None if str(champion) == str(version) else [int(version)])  # others compare to it


def evaluate_per_task(
    gates: list[Gate],
    candidate: dict[str, dict[str, float]],
    champion: dict[str, dict[str, float]],
    champion_label: str,
) -> list[GateCheck]:
    """The gates applied to each task's metrics (task -> metric -> value), where the overall average could
    hide a regression on one task behind a gain on another. Relative gates compare with the champion's
    value on the same task; gates on other aliases or the base, and tasks without the metric, are left out."""
    checks = []
    for task, values in candidate.items():
        for gate in gates:
            value = values.get(gate.metric)
            if value is None or (gate.ref is not None and gate.ref != "champion"):
                continue
            if gate.number is not None:
                threshold, compared_with = gate.number, "absolute"
            else:
                held = champion.get(task, {}).get(gate.metric)
                if held is None:
                    continue
                threshold, compared_with = gate.threshold_from(held), f"{champion_label} on {task}"
            passed = _OPS[gate.op](value, threshold)
            checks.append(
                GateCheck(
                    gate=f"{gate.text} [task {task}]",
                    status="passed" if passed else "failed",
                    value=value,
                    threshold=threshold,
                    compared_with=compared_with,
                    reason=""
                    if passed
                    else f"{gate.metric} = {value:g} on {task} is not {gate.op} {threshold:g} ({compared_with})",
                )
            )
    return checks
