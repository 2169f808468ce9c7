"""MLflow connection: tracking/registry URIs and experiments from tuneloop's settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import StoreError
from tuneloop.names import EXPERIMENT_NOTES, SERVE_EXPERIMENT_NOTE, serve_experiment
from tuneloop.quiet import quiet_mlflow
from tuneloop.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a description


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow's fluent API and a client at tuneloop's stores."""
    import mlflow
    from mlflow import MlflowClient

    quiet_mlflow()
    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not settings.stores.migrate_on_start and not uri.startswith(("http://", "https://", "databricks")):
        from tuneloop.store.schema import mlflow_status, require_current

        require_current(mlflow_status(uri))  # MLflow would otherwise create the tables of an empty database
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # opens (and on first use migrates) the store
    except Exception as exc:  # noqa: BLE001
        raise StoreError(
            f"cannot open the MLflow store: {settings.scrub(str(exc))[:500]}",
            hint="check `stores.mlflow_uri` and that its database is reachable",
        ) from None
    return client


def experiment_name(settings: Settings, suffix: str) -> str:
    """The MLflow name of one of tuneloop's experiments (`names.Experiment`, `serve_experiment`)."""
    return f"{settings.experiment_prefix}-{suffix}"


def existing_experiment_id(client: MlflowClient, settings: Settings, suffix: str) -> str | None:
    """The id of `<prefix>-<suffix>` if it exists; never creates it."""
    found = client.get_experiment_by_name(experiment_name(settings, suffix))
    return found.experiment_id if found is not None else None


def experiment_id(client: MlflowClient, settings: Settings, suffix: str) -> str:
    """Get or create `<prefix>-<suffix>`, with its artifacts under tuneloop's artifact root."""
    name = experiment_name(settings, suffix)
    note = EXPERIMENT_NOTES.get(suffix, "")
    if not note and suffix.startswith(serve_experiment("")):
        note = SERVE_EXPERIMENT_NOTE.format(name=suffix.removeprefix(serve_experiment("")))
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if note and NOTE_TAG not in found.tags:  # created by a version that wrote no description
            client.set_experiment_tag(found.experiment_id, NOTE_TAG, note)
        return found.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=f"{settings.artifact_root}/{suffix}", tags={NOTE_TAG: note} if note else None
        )
    except Exception:
        found = client.get_experiment_by_name(name)  # created by a concurrent process
        if found is None:
            raise
        return found.experiment_id


def file_dataset(frame: Any, path: str | Path, name: str) -> Any:
    """An MLflow dataset of `frame`, read from the local file `path`, for `mlflow.log_input`.

    The source is passed as an object: given a path string, MLflow resolves it among its registered sources,
    finds LocalArtifactDatasetSource registered twice, and warns that the path is ambiguous."""
    import mlflow
    from mlflow.data.dataset_source_registry import get_registered_sources

    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return mlflow.data.from_pandas(frame, source=local(str(path)), name=name)
