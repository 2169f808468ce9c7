"""Where `tuneloop train` runs a recipe: here (`local`), as a Kubernetes Job (`kubernetes`), or as a Vertex AI
custom job (`vertex`, spec only). The same validated recipe goes everywhere.

A remote job needs the recipe's data where its pod can read it: files of at most `SHIPPED_DATA_BYTES`
together travel with the recipe (ConfigMap); larger ones must already live on the job's storage — under
/data (the `kubernetes.data_claim` volume) or /gcs/BUCKET (Vertex mounts Cloud Storage there). The base
model and everything the run writes go through the shared stores (PostgreSQL + S3), so the Job's pod
needs only their Secrets, which the manifests reference and never contain.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tuneloop.errors import InvalidInput, TuneloopError, UsageError
from tuneloop.pipelines.training.recipes import REMOTE_DATA_ROOTS, Recipe
from tuneloop.settings import KubernetesSettings

SHIPPED_DATA_BYTES = 900_000  # a ConfigMap holds at most 1 MiB, recipe included
RECIPE_MOUNT = "/etc/tuneloop-recipe"
VERTEX_A100_MACHINES = {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"}


@dataclass
class Submission:
    backend: str
    name: str
    manifests: list[dict[str, Any]] = field(default_factory=list)
    submitted: bool = False
    follow: str = ""  # the command that shows the job's progress

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_name(recipe: Recipe, salt: str) -> str:
    """A DNS-1123 name, unique per submission: `train-<recipe name>-<8 hex>`."""
    stem = re.sub(r"[^a-z0-9-]+", "-", recipe.name.lower()).strip("-")[:40] or "recipe"
    return f"train-{stem}-{hashlib.sha256(salt.encode()).hexdigest()[:8]}"


def remote_recipe(recipe: Recipe, mount: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(the recipe as the job reads it, {file name: content} of the data files shipped beside it)."""
    shipped: dict[str, str] = {}
    paths: dict[str, str] = {}
    small = [p for p in (recipe.data.train, recipe.data.eval) if p is not None and not is_remote(p)]
    total = sum(p.stat().st_size for p in small if p.is_file())
    for key, path in (("train", recipe.data.train), ("eval", recipe.data.eval)):
        if path is None:
            continue
        if is_remote(path):
            paths[key] = str(PurePosixPath(path))
            continue
        if not path.is_file():
            raise InvalidInput(
                f"data file `{path}` does not exist", hint="check `data.train` / `data.eval` in the recipe"
            )
        if total > SHIPPED_DATA_BYTES:
            raise InvalidInput(
                f"the recipe's local data ({total:,} bytes) is too large to travel with the job (at most {SHIPPED_DATA_BYTES:,})",
                hint="put the files on the job's storage and name them in the recipe: /data/... (kubernetes.data_claim) "
                "or /gcs/BUCKET/... (Vertex AI)",
            )
        if path.suffix.lower() == ".parquet":
            raise InvalidInput(
                f"`{path}` is Parquet, which cannot travel in a ConfigMap or an environment variable",
                hint="put it on the job's storage (/data/... or /gcs/BUCKET/...), or convert it to JSONL",
            )
        name = f"{key}{path.suffix}"
        shipped[name] = path.read_bytes().decode("utf-8")  # exact bytes (no newline translation): the same sha256
        paths[key] = f"{mount}/{name}"
    document = recipe.model_dump(mode="json", exclude_none=True)
    document["data"].update(paths)
    return document, shipped


def is_remote(path: Path) -> bool:
    return str(PurePosixPath(path)).startswith(REMOTE_DATA_ROOTS)


def _store_env(k: KubernetesSettings) -> list[dict[str, Any]]:
    """The chart's store environment (templates/_helpers.tpl `tuneloop.storeEnv`): URLs from Secrets only."""

    def secret(name: str, secret_name: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}

    env = [
        secret("TUNELOOP_STORES__MLFLOW_URI", k.stores_secret, "mlflow-uri"),
        secret("TUNELOOP_STORES__DATABASE_URL", k.stores_secret, "database-url"),
        {"name": "TUNELOOP_STORES__ARTIFACT_ROOT", "value": k.artifact_root},
        {"name": "TUNELOOP_STORES__MIGRATE_ON_START", "value": "false"},
        {"name": "TUNELOOP_HOME", "value": "/var/lib/tuneloop"},
    ]
    if k.s3_endpoint:
        env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": k.s3_endpoint})
    if k.s3_secret:
        env += [
            secret("AWS_ACCESS_KEY_ID", k.s3_secret, "AWS_ACCESS_KEY_ID"),
            secret("AWS_SECRET_ACCESS_KEY", k.s3_secret, "AWS_SECRET_ACCESS_KEY"),
        ]
    return env


def train_command(gpus: int, recipe_file: str, args: list[str]) -> list[str]:
    """torchrun with one process per GPU (rank 0 logs and registers); plain `tuneloop train` without GPUs."""
    tail = ["train", recipe_file, "--json", *args]
    if gpus <= 1:
        return ["tuneloop", *tail]
    return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "--no-python", "tuneloop", *tail]


def kubernetes_manifests(recipe: Recipe, k: KubernetesSettings, args: list[str], salt: str) -> list[dict[str, Any]]:
    """A ConfigMap (recipe + small data files) and the Job that trains it."""
    import yaml

    name = job_name(recipe, salt)
    document, shipped = remote_recipe(recipe, RECIPE_MOUNT)
    labels = {
        "app.kubernetes.io/name": "tuneloop",
        "app.kubernetes.io/component": "training",
        "tuneloop.recipe": re.sub(r"[^A-Za-z0-9_.-]+", "-", recipe.name)[:63],
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-recipe", "namespace": k.namespace, "labels": labels},
        "data": {"recipe.yaml": yaml.safe_dump(document, sort_keys=False), **shipped},
    }
    gpu = {"nvidia.com/gpu": k.gpus} if k.gpus else {}
    mounts = [
        {"name": "recipe", "mountPath": RECIPE_MOUNT, "readOnly": True},
        {"name": "home", "mountPath": "/var/lib/tuneloop"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "recipe", "configMap": {"name": f"{name}-recipe"}},
        {"name": "home", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    if k.data_claim:
        mounts.append({"name": "data", "mountPath": "/data", "readOnly": True})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": k.data_claim, "readOnly": True}})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [
            {
                "name": "train",
                "image": k.image,
                "command": train_command(k.gpus, f"{RECIPE_MOUNT}/recipe.yaml", args),
                "env": _store_env(k),
                "resources": {"requests": dict(gpu), "limits": dict(gpu)},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if k.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if k.node_selector:
        pod["nodeSelector"] = dict(k.node_selector)
    if k.service_account:
        pod["serviceAccountName"] = k.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    return [config_map, job]


def submit_kubernetes(
    recipe: Recipe, k: KubernetesSettings, args: list[str], *, salt: str, dry_run: bool, kubectl: str = "kubectl"
) -> Submission:
    manifests = kubernetes_manifests(recipe, k, args, salt)
    name = manifests[1]["metadata"]["name"]
    context = ["--context", k.context] if k.context else []
    follow = f"kubectl {' '.join(context)} -n {k.namespace} logs -f job/{name}".replace("  ", " ")
    submission = Submission("kubernetes", name, manifests, follow=follow)
    if dry_run:
        return submission
    try:
        proc = subprocess.run(
            [kubectl, *context, "apply", "-f", "-"],
            input=to_yaml(manifests),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except FileNotFoundError:
        raise UsageError(
            f"`{kubectl}` is not installed", hint="install kubectl, or print the manifests with --dry-run"
        ) from None
    except subprocess.TimeoutExpired:
        raise TuneloopError(
            "kubectl apply did not answer in 120 s", hint="check the cluster connection (kubectl cluster-info)"
        ) from None
    if proc.returncode != 0:
        raise TuneloopError(
            f"kubectl apply failed: {proc.stderr.strip()[-1000:]}", hint="check the context, namespace and permissions"
        )
    submission.submitted = True
    return submission


def vertex_custom_job(recipe: Recipe, k: KubernetesSettings, args: list[str], *, salt: str) -> Submission:
    """A Vertex AI CustomJob spec (`gcloud ai custom-jobs create --region R --config SPEC`). The recipe travels in
    an environment variable; data must be under /gcs/BUCKET (Cloud Storage FUSE) unless it is small; the store
    URLs are read from Secret Manager (`<stores_secret>-mlflow-uri`, `<stores_secret>-database-url`) inside the
    container, so they never appear in the spec."""
    gpus = max(k.gpus, 1)
    if gpus not in VERTEX_A100_MACHINES:
        raise InvalidInput(
            f"Vertex AI A100 machines come with {', '.join(map(str, VERTEX_A100_MACHINES))} GPUs, not {gpus}",
            hint="set kubernetes.gpus (or --gpus) to one of those",
        )
    document, shipped = remote_recipe(recipe, "/tmp/tuneloop-recipe")
    files = {"recipe.yaml": to_yaml([document]), **shipped}
    steps = ["mkdir -p /tmp/tuneloop-recipe"]
    steps += [f"printf '%s' \"$TUNELOOP_FILE_{i}\" > /tmp/tuneloop-recipe/{name}" for i, name in enumerate(files)]
    steps += [
        f"export TUNELOOP_STORES__MLFLOW_URI=$(gcloud secrets versions access latest --secret={k.stores_secret}-mlflow-uri)",
        f"export TUNELOOP_STORES__DATABASE_URL=$(gcloud secrets versions access latest --secret={k.stores_secret}-database-url)",
        "exec " + " ".join(shlex.quote(a) for a in train_command(gpus, "/tmp/tuneloop-recipe/recipe.yaml", args)),
    ]
    env = [{"name": f"TUNELOOP_FILE_{i}", "value": text} for i, text in enumerate(files.values())]
    env += [
        {"name": "TUNELOOP_STORES__ARTIFACT_ROOT", "value": k.artifact_root},
        {"name": "TUNELOOP_STORES__MIGRATE_ON_START", "value": "false"},
    ]
    job_spec: dict[str, Any] = {
        "workerPoolSpecs": [
            {
                "machineSpec": {
                    "machineType": VERTEX_A100_MACHINES[gpus],
                    "acceleratorType": "NVIDIA_TESLA_A100",
                    "acceleratorCount": gpus,
                },
                "replicaCount": 1,
                "containerSpec": {
                    "imageUri": k.image,
                    "command": ["bash", "-c"],
                    "args": [" && ".join(steps)],
                    "env": env,
                },
            }
        ]
    }
    if k.service_account:
        job_spec["serviceAccount"] = k.service_account
    name = job_name(recipe, salt)
    spec = {"displayName": name, "jobSpec": job_spec}
    return Submission(
        "vertex",
        name,
        [spec],
        follow="gcloud ai custom-jobs create --region REGION --config SPEC.json, then gcloud ai custom-jobs stream-logs",
    )


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    """Multi-document YAML with multi-line strings (the recipe, data files) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # shared dicts (labels) are written out, not as &anchors
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(manifests, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)


def describe(submission: Submission) -> str:
    """The manifests as a person reads and kubectl applies them."""
    if submission.backend == "kubernetes":
        return to_yaml(submission.manifests)
    return json.dumps(submission.manifests[0], indent=2) + "\n"
