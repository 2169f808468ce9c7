"""Cheap registry versions for promotion tests: MLflow versions without model payloads."""

from __future__ import annotations

from tuneloop.names import Tag


def make_versions(
    rc, name: str, metrics: list[dict[str, float]], kind: str = "base", base: tuple[str, int] | None = None
):
    """Create one version per metrics dict (attached where gates read them); returns version numbers."""
    from tuneloop.registry.gates import record_metrics

    client = rc.mlflow
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, tags={Tag.KIND: kind})
    numbers = []
    for values in metrics:
        tags = {Tag.KIND: kind}
        if base is not None:
            tags.update({Tag.BASE_NAME: base[0], Tag.BASE_VERSION: str(base[1])})
        mv = client.create_model_version(name, f"file:///nonexistent/{name}", tags=tags)
        if values:
            record_metrics(rc, name, mv.version, values)
        numbers.append(int(mv.version))
    return numbers
