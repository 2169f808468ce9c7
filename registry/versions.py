"""Log a model as an MLflow pyfunc and register it as a new version, all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import StoreError
from tuneloop.names import Experiment, Tag
from tuneloop.quiet import ignoring
from tuneloop.registry import descriptions

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tuneloop.registry.client import RegistryClient

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
PIP_REQUIREMENTS = ["torch>=2.4", "transformers>=4.45", "peft>=0.13", "safetensors", "accelerate"]


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts, or a one-column DataFrame
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 64), ParamSpec("temperature", "double", 0.0)]),
    )


def log_and_register(
    rc: RegistryClient,
    name: str,
    *,
    artifacts: dict[str, Path],
    model_config: dict[str, Any],
    tags: dict[str, str],
    run_name: str,
) -> ModelVersion:
    """Log `artifacts` (folders, stored under their keys) with the pyfunc wrapper and register them.

    When an MLflow run is active (a training run), the model is logged into it; otherwise a run of
    its own is created in the registry experiment. On any failure the run (if created here), logged
    model, version and (if this call created it) registered model are deleted again, so a failed
    registration leaves nothing dangling.
    """
    import mlflow

    client = rc.mlflow
    created_model = not client.search_registered_models(filter_string=f"name = '{_quote(name)}'")
    active = mlflow.active_run()
    run_id = logged_model_id = version = None
    try:
        rc.cache_dir.mkdir(parents=True, exist_ok=True)
        run_context = (
            nullcontext(active)
            if active is not None
            else mlflow.start_run(experiment_id=_experiment(rc), run_name=run_name, tags={Tag.KIND: tags[Tag.KIND]})
        )
        with tempfile.TemporaryDirectory(dir=rc.cache_dir) as staging, run_context as run:
            if active is None:
                run_id = run.info.run_id
                mlflow.log_params({k.removeprefix(Tag.PREFIX): v for k, v in tags.items() if len(v) <= 500})
            staged = {}
            for key, folder in artifacts.items():  # MLflow names an artifact after its folder
                staged[key] = str(_stage_folder(Path(folder), Path(staging) / key))
            # The signature is given; an input example would make MLflow load the model to run it.
            with ignoring(r".*An input example was not provided"):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_CODE),
                    artifacts=staged,
                    model_config=model_config,
                    signature=_signature(),
                    pip_requirements=PIP_REQUIREMENTS,
                )
            logged_model_id = info.model_id
            if created_model:
                client.create_registered_model(name, tags={Tag.KIND: tags[Tag.KIND]})
            mv = client.create_model_version(
                name, info.model_uri, run_id=run.info.run_id, tags=tags, model_id=logged_model_id
            )
            version = mv.version
            artifact_uri = client.get_logged_model(logged_model_id).artifact_location
            client.set_model_version_tag(name, version, Tag.ARTIFACT_URI, artifact_uri)
            descriptions.refresh(rc, name, [int(version)])
            return client.get_model_version(name, version)
    except BaseException as exc:
        _undo(rc, name, created_model, run_id, logged_model_id, version)
        if isinstance(exc, Exception) and not hasattr(exc, "exit_code"):
            raise StoreError(
                f"registering `{name}` failed and was rolled back: {rc.settings.scrub(str(exc))[:500]}",
                hint="check the MLflow store and the artifact root, then retry",
            ) from exc
        raise


def _stage_folder(source: Path, target: Path) -> Path:
    """A copy of `source` under the artifact key's name: hard links where possible (same disk), else copies.

    MLflow refuses symlinks that lead out of the folder it copies.
    """
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)
    target.mkdir(parents=True, exist_ok=True)
    return target


def _experiment(rc: RegistryClient) -> str:
    from tuneloop.registry.tracking import experiment_id

    return experiment_id(rc.mlflow, rc.settings, Experiment.REGISTRY)


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


def _undo(
    rc: RegistryClient,
    name: str,
    created_model: bool,
    run_id: str | None,
    logged_model_id: str | None,
    version: str | None,
) -> None:
    client = rc.mlflow
    steps = []
    if version is not None:
        steps.append(lambda: client.delete_model_version(name, version))
    if created_model:
        steps.append(lambda: client.delete_registered_model(name))
    if logged_model_id is not None:
        steps.append(lambda: client.delete_logged_model(logged_model_id))
    if run_id is not None:
        steps.append(lambda: client.delete_run(run_id))
    for step in steps:
        try:
            step()
        except Exception:  # best effort: the store may be what failed  # noqa: BLE001, S110
            pass


def load_pyfunc(rc: RegistryClient, name: str, version: int | str) -> Any:
    """A registered version's pyfunc model, read through `rc`'s stores.

    The URIs are set first, always: where nothing set them, MLflow 3 falls back to `sqlite:///mlflow.db` in
    the working folder, creates an empty store there and then finds no model (how an `mlflow.db` holding
    only the Default experiment once got committed); and in a process with several clients they point at
    whichever connected last."""
    import mlflow

    mlflow.set_tracking_uri(rc.settings.mlflow_uri)
    mlflow.set_registry_uri(rc.settings.mlflow_uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version}")
