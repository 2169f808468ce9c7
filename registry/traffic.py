"""Setting a served model's traffic policy: validated, stored and audited in one transaction holding the
model's registry lock (the lock promotions take), mirrored into MLflow's audit experiment."""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.registry import audit
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.promotion import lock_name
from tuneloop.store.traffic import StoredPolicy
from tuneloop.traffic import TrafficPolicy
from tuneloop.yaml_models import load_yaml_model

AUDIT_ALIAS = "(traffic)"  # what a policy change's audit entry names instead of an alias (none can be spelled so)
EXAMPLE = "e.g. `shadow: {alias: challenger, share: 0.25}` or `canary: {alias: challenger, share: 0.1}`"


def load_policy(path: str | Path) -> TrafficPolicy:
    return load_yaml_model(
        path,
        TrafficPolicy,
        kind="traffic policy",
        hint=f"a policy has a `canary` and/or a `shadow` section, {EXAMPLE}; an empty file turns both off",
    )


def set_policy(rc: RegistryClient, model: str, policy: TrafficPolicy, *, reason: str = "") -> StoredPolicy:
    """Store `policy` for `model` (every server follows within `serve.reload_seconds`), with its audit entry."""
    rc.registered_model(model)
    with rc.stores.transaction(lock=lock_name(model)) as tx:
        before = rc.stores.traffic.get(model, tx).policy  # under the lock: concurrent setters audit in order
        rc.stores.traffic.put(tx, model, policy, rc.settings.actor_name)
        rc.stores.audit.append(
            tx,
            actor=rc.settings.actor_name,
            model=model,
            alias=AUDIT_ALIAS,
            kind="traffic",
            from_version=None,
            to_version=None,
            reason=json.dumps(
                {"from": before.summary(), "to": policy.summary(), "policy": policy.model_dump(exclude_none=True)}
                | ({"reason": reason} if reason else {})
            ),
        )
        audit.mirror_pending(rc, tx, model)
    return rc.stores.traffic.get(model)


def show_policy(rc: RegistryClient, model: str) -> StoredPolicy:
    rc.registered_model(model)
    return rc.stores.traffic.get(model)
