"""What a release manager reads in the MLflow UI: the description of every registered model and version.

A version's page says what it is, its base, what it was trained on and why, its metrics beside the
champion's and the last gate verdict; the `tuneloop.*` tags below it are the machine-readable record.
Descriptions are derived from those tags and the training run, and rewritten whenever what they say can
change: on registration, when metrics are recorded, when gates decide and when an alias moves.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tuneloop.names import Alias, Tag
from tuneloop.registry.version_metrics import metrics_of

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tuneloop.registry.client import RegistryClient

MAX_METRICS = 12
MAX_VERSIONS = 50  # newest versions whose pages are kept current after a move


def version_description(rc: RegistryClient, mv: ModelVersion, aliases: dict[str, str]) -> str:
    """The page of one version (`aliases`: alias -> version number as text, of the registered model)."""
    tags = mv.tags or {}
    held = sorted(a for a, v in aliases.items() if v == str(mv.version))
    lines = [f"**{mv.name} v{mv.version}** — {_what(tags)}" + (f" · holds `{'`, `'.join(held)}`" if held else "")]
    lines += _training(rc, tags)
    lines += _metrics_table(rc, mv, aliases)
    verdict = tags.get(Tag.GATE_VERDICT)
    if verdict:
        lines.append(_verdict_line(json.loads(verdict)))
    serving = tags.get(Tag.SERVING)
    if serving:
        lines.append(_serving_line(json.loads(serving)))
    return "\n\n".join(lines)


def model_description(rc: RegistryClient, name: str) -> str:
    rm = rc.registered_model(name)
    kind = (rm.tags or {}).get(Tag.KIND, "model")
    holders = ", ".join(f"`{a}` → v{v}" for a, v in sorted(rm.aliases.items())) or "no alias yet"
    policy = json.loads((rm.tags or {}).get(Tag.GATE_POLICY, "[]"))
    gates = "; ".join(f"`{g}`" for g in policy) or "none: any version can be promoted"
    return (
        f"A tuneloop {kind} model. Aliases: {holders}. Promotion gates: {gates}.\n\n"
        "Each version's description says what it is, what it was trained on and why, its metrics against the "
        "champion's and the last gate verdict; `tuneloop models show` prints the same."
    )


def refresh(rc: RegistryClient, name: str, versions: list[int] | None = None) -> None:
    """Rewrite the descriptions of the model and of `versions` (default: its newest MAX_VERSIONS)."""
    client = rc.mlflow
    rm = rc.registered_model(name)
    aliases = {a: str(v) for a, v in rm.aliases.items()}
    if versions is None:
        found = client.search_model_versions(f"name = '{name.replace(chr(39), chr(39) * 2)}'")
        versions = sorted((int(v.version) for v in found), reverse=True)[:MAX_VERSIONS]
    for number in versions:
        mv = client.get_model_version(name, str(number))
        text = rc.settings.scrub(version_description(rc, mv, aliases))  # a source or reason may hold a URL
        if text != (mv.description or ""):
            client.update_model_version(name, str(number), description=text)
    text = model_description(rc, name)
    if text != (rm.description or ""):
        client.update_registered_model(name, description=text)


def _what(tags: dict[str, str]) -> str:
    kind, method = tags.get(Tag.KIND, "model"), tags.get(Tag.METHOD)
    if Tag.BASE_NAME not in tags:
        size = tags.get(Tag.PARAMETERS, "")
        shape = f" ({tags.get(Tag.ARCHITECTURE, 'model')}, {int(size):,} parameters)" if size.isdigit() else ""
        return f"{kind} model imported from `{tags.get(Tag.SOURCE, 'unknown')}`{shape}"
    what = "full fine-tune" if method == "full" else f"{method} adapter" if method else kind
    text = f"{what} on `{tags[Tag.BASE_NAME]}:{tags[Tag.BASE_VERSION]}`"
    if tags.get(Tag.PARENT_ADAPTER):
        text += f", continued from `{tags[Tag.PARENT_ADAPTER]}`"
    return text


def _training(rc: RegistryClient, tags: dict[str, str]) -> list[str]:
    run_id = tags.get(Tag.TRAINING_RUN_ID)
    if not run_id:
        return []
    from mlflow.exceptions import MlflowException

    try:
        params = rc.mlflow.get_run(run_id).data.params
    except MlflowException:
        return [f"Trained by run `{run_id}` (no longer in MLflow)."]
    digests = json.loads(tags.get(Tag.DATASET_DIGESTS, "{}"))
    data = ", ".join(
        f"{split} `{_file_name(params.get(f'data.{key}', ''))}` ({digest.removeprefix('sha256:')[:12]})"
        for split, key, digest in (
            ("train", "train", digests.get("train")),
            ("eval", "eval", digests.get("eval")),
        )
        if digest
    )
    steps = params.get("training.max_steps")
    line = f"Trained by run `{run_id}`" + (f" for {steps} steps" if steps else "") + (f" on {data}" if data else "")
    why = (params.get("description") or "").strip()
    return [line + "." + (f" Why: {why}." if why else "")]


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1] or "?"


def _metrics_table(rc: RegistryClient, mv: ModelVersion, aliases: dict[str, str]) -> list[str]:
    mine = metrics_of(mv)
    champion_version = aliases.get(Alias.CHAMPION)
    theirs: dict[str, float] = {}
    if champion_version and champion_version != str(mv.version):
        theirs = metrics_of(rc.mlflow.get_model_version(mv.name, champion_version))
    if not mine:
        return ["No evaluation recorded yet (`tuneloop eval SUITE --model NAME:VERSION`)."]
    names = sorted(mine)[:MAX_METRICS]
    if not theirs:
        return ["| metric | this version |\n|---|---|\n" + "\n".join(f"| {k} | {mine[k]:.4g} |" for k in names)]
    rows = "\n".join(
        f"| {k} | {mine[k]:.4g} | {_fmt(theirs.get(k))} | {_delta(mine[k], theirs.get(k))} |" for k in names
    )
    return [f"| metric | this version | champion v{champion_version} | difference |\n|---|---|---|---|\n{rows}"]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _delta(mine: float, theirs: float | None) -> str:
    return "—" if theirs is None else f"{mine - theirs:+.4g}"


def _serving_line(figures: dict[str, Any]) -> str:
    latency = (
        f", p50 {figures['latency_p50_ms']:.0f} ms, p95 {figures['latency_p95_ms']:.0f} ms"
        if "latency_p95_ms" in figures
        else ""
    )
    return (
        f"Serving ({figures['at'][:19].replace('T', ' ')} UTC, `{figures['server']}`, last {figures['seconds']:g} s): "
        f"{figures['requests']:.0f} requests, {figures['completion_tokens_per_s']:.1f} completion tokens/s{latency}, "
        f"{figures['errors']:.0f} errors, {figures['rejected_429']:.0f} refused (429); "
        f"{figures['requests_total']:.0f} requests since that server started."
    )


def _verdict_line(verdict: dict[str, Any]) -> str:
    checks = verdict.get("checks") or []
    passed = sum(c["status"] == "passed" for c in checks)
    detail = "; ".join(f"`{c['gate']}` {c['status']}" for c in checks) or "no gates"
    return (
        f"Last gate verdict ({verdict['at'][:19].replace('T', ' ')} UTC, for `{verdict['alias']}`): "
        f"**{verdict['outcome']}**, {passed} of {len(checks)} gates passed — {detail}."
    )
