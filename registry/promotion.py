"""Moving aliases: gated promotion, rollback and history.

Gate check, alias move and audit entry happen inside one transaction holding the model's lock
(`Stores.transaction(lock=...)`), so concurrent promoters serialise and every audit entry starts where the
previous one for that alias ended.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from tuneloop.errors import Conflict, GateFailed, NotFound, UsageError
from tuneloop.names import Tag
from tuneloop.registry import audit, descriptions, gates
from tuneloop.registry.client import RegistryClient
from tuneloop.schemas import AliasMove, GateCheck, MoveKind
from tuneloop.store import Transaction

log = logging.getLogger(__name__)
_ALIAS = re.compile(r"^[A-Za-z_][\w-]{0,254}$")
_RESERVED = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


def lock_name(model: str) -> str:
    return f"registry:{model}"


@dataclass
class PromotionResult:
    move: AliasMove | None  # None when the alias already pointed at that version
    gates: list[GateCheck]
    unaudited: list[AliasMove]


def parse_version(model: str, version: str | int) -> int:
    """Accept `3`, `v3` or `MODEL:3`; refuse a version of another model."""
    text = str(version).strip()
    if ":" in text:
        owner, text = text.rsplit(":", 1)
        if owner != model:
            raise Conflict(
                f"version `{version}` belongs to model `{owner}`, not `{model}`",
                hint=f"an alias of `{model}` can only point at a version of `{model}`",
            )
    text = text.removeprefix("v")
    if not text.isdigit():
        raise UsageError(f"`{version}` is not a version number", hint="pass a number such as 3")
    return int(text)


def _check_alias(alias: str) -> None:
    if not _ALIAS.match(alias) or _RESERVED.match(alias):
        raise UsageError(
            f"`{alias}` cannot be an alias",
            hint="use letters, digits, `_` or `-`, starting with a letter; `latest` and `vN` are reserved",
        )


def promote(
    rc: RegistryClient,
    model: str,
    version: str | int,
    alias: str,
    *,
    force: bool = False,
    reason: str = "",
) -> PromotionResult:
    _check_alias(alias)
    if force and not reason.strip():
        raise UsageError("`--force` needs `--reason`", hint='say why the gates are overridden: --reason "..."')
    number = parse_version(model, version)
    policy = gates.policy_of(rc, model)  # also checks the model exists
    with rc.stores.transaction(lock=lock_name(model)) as tx:
        unaudited = audit.reconcile(rc, tx, model)
        candidate = rc.model_version(model, number)
        current = rc.stores.audit.last_holders(tx, model).get(alias)
        if current == number:
            _mirror(rc, tx, model)
            return PromotionResult(move=None, gates=[], unaudited=unaudited)
        checks = gates.evaluate(rc, candidate, policy, tx)
        failed = [c for c in checks if c.status == "failed"]
        no_evidence = bool(checks) and all(c.status == "skipped" for c in checks)
        if not checks:
            outcome = "no gates"
        elif failed or no_evidence:
            outcome = "forced" if force else "refused"
        else:
            outcome = "passed"
        _record_verdict(rc, model, number, alias, outcome, checks)
        if no_evidence and not force:
            raise GateFailed(
                f"promotion of `{model}` v{number} to `{alias}` refused: no evidence — none of the "
                f"{len(checks)} gates could be evaluated:\n  "
                + "\n  ".join(f"skipped {c.gate}: {c.reason}" for c in checks),
                hint=f"run `tuneloop eval SUITE --model {model}:{number}` (and on the base or the current holder for "
                "relative gates), add an absolute gate, or override with --force --reason TEXT",
                details=[c.model_dump() for c in checks],
            )
        if failed and not force:
            raise GateFailed(
                f"promotion of `{model}` v{number} to `{alias}` refused: "
                f"{len(failed)} of {len(checks)} gates failed:\n  "
                + "\n  ".join(f"{c.status} {c.gate}: {c.reason}" for c in checks if c.status != "passed"),
                hint="improve the model, or override with --force --reason TEXT (recorded in the audit trail)",
                details=[c.model_dump() for c in checks],
            )
        move = _move_alias(
            rc, tx, model, alias, "promote", current, number, forced=bool(failed) or force, reason=reason, checks=checks
        )
    _refresh_descriptions(rc, model)
    return PromotionResult(move=move, gates=checks, unaudited=unaudited)


def rollback(rc: RegistryClient, model: str, alias: str, *, reason: str = "") -> PromotionResult:
    """Move `alias` back to the version that held it before the current holder."""
    _check_alias(alias)
    rc.registered_model(model)
    with rc.stores.transaction(lock=lock_name(model)) as tx:
        unaudited = audit.reconcile(rc, tx, model)
        history = rc.stores.audit.entries(tx, model, alias)
        if not history or history[-1].to_version is None:
            raise NotFound(
                f"`{model}@{alias}` has no holder to roll back", hint=f"see `tuneloop models history {model}`"
            )
        previous = history[-1].from_version
        if previous is None:
            raise NotFound(
                f"`{model}@{alias}` (v{history[-1].to_version}) had no previous holder",
                hint="promote the version you want instead",
            )
        rc.model_version(model, previous)  # it may have been deleted since
        reason = reason or f"rollback of entry {history[-1].id}"
        move = _move_alias(
            rc, tx, model, alias, "rollback", history[-1].to_version, previous, forced=False, reason=reason, checks=[]
        )
    _refresh_descriptions(rc, model)
    return PromotionResult(move=move, gates=[], unaudited=unaudited)


def _move_alias(
    rc: RegistryClient,
    tx: Transaction,
    model: str,
    alias: str,
    kind: MoveKind,
    from_version: int | None,
    to_version: int,
    *,
    forced: bool,
    reason: str,
    checks: list[GateCheck],
) -> AliasMove:
    """Audit entry first, then the MLflow alias: if setting the alias fails, the entry rolls back with it."""
    move = rc.stores.audit.append(
        tx,
        actor=rc.settings.actor_name,
        model=model,
        alias=alias,
        kind=kind,
        from_version=from_version,
        to_version=to_version,
        forced=forced,
        reason=reason,
        gates=checks,
    )
    rc.mlflow.set_registered_model_alias(model, alias, str(to_version))
    rc.models.forget(model)  # what this process just promoted is what it resolves next
    _mirror(rc, tx, model)
    return move


def history(rc: RegistryClient, model: str, alias: str | None = None) -> tuple[list[AliasMove], list[int]]:
    """Every alias move of `model` (oldest first) and the ids of entries that fail the hash chain."""
    rc.registered_model(model)
    with rc.stores.transaction(lock=lock_name(model)) as tx:
        audit.reconcile(rc, tx, model)
        _mirror(rc, tx, model)
        return rc.stores.audit.entries(tx, model, alias), rc.stores.audit.verify_chain(tx, model)


def reconcile(rc: RegistryClient, model: str) -> list[AliasMove]:
    with rc.stores.transaction(lock=lock_name(model)) as tx:
        moves = audit.reconcile(rc, tx, model)
        _mirror(rc, tx, model)
        return moves


def _record_verdict(
    rc: RegistryClient, model: str, version: int, alias: str, outcome: str, checks: list[GateCheck]
) -> None:
    """Keep the gates' decision on the version (a refusal too: it is what a release manager looks for)."""
    verdict = {
        "alias": alias,
        "outcome": outcome,
        "at": datetime.now(UTC).isoformat(),
        "checks": [{"gate": c.gate, "status": c.status} for c in checks],
    }
    rc.mlflow.set_model_version_tag(model, str(version), Tag.GATE_VERDICT, json.dumps(verdict))
    if outcome == "refused":
        _refresh_descriptions(rc, model, [version])


def _refresh_descriptions(rc: RegistryClient, model: str, versions: list[int] | None = None) -> None:
    """Descriptions are derived from tags and runs: one that cannot be rewritten now is rewritten next time."""
    from mlflow.exceptions import MlflowException

    try:
        descriptions.refresh(rc, model, versions)
    except MlflowException as exc:
        log.warning("could not update the descriptions of %s yet: %s", model, rc.settings.scrub(str(exc)))


def _mirror(rc: RegistryClient, tx: Transaction, model: str) -> None:
    """Mirror into MLflow; a failure leaves entries pending for the next operation, never loses them."""
    try:
        with rc.stores.savepoint(tx):
            audit.mirror_pending(rc, tx, model)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not mirror audit entries of %s into MLflow yet: %s", model, rc.settings.scrub(str(exc)))
