"""Base models, adapters, lineage and loading through plain MLflow, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.digest import folder_sha256
from tuneloop.errors import Conflict, InvalidInput, NotFound, UsageError
from tuneloop.names import Tag


def test_import_base_records_digest_parameters_architecture_and_dedups(rc, tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tuneloop.registry.base_models import import_base

    mv, existed = import_base(rc, "tiny", str(tiny_model))
    assert not existed and int(mv.version) == 1
    tags = mv.tags
    assert tags[Tag.KIND] == "base"
    assert tags[Tag.CONTENT_DIGEST] == folder_sha256(tiny_model)
    assert tags[Tag.ARCHITECTURE] == "LlamaForCausalLM"
    assert int(tags[Tag.PARAMETERS]) == AutoModelForCausalLM.from_pretrained(tiny_model).num_parameters()
    assert tags[Tag.SOURCE] == str(tiny_model.resolve())

    again, existed = import_base(rc, "tiny", str(tiny_model))
    assert existed and again.version == mv.version
    assert len(rc.mlflow.search_model_versions("name = 'tiny'")) == 1


def test_changed_content_becomes_a_new_version(rc, tiny_model: Path, tmp_path: Path) -> None:
    from tuneloop.registry.base_models import import_base

    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config["rope_theta"] = 12345.0
    (copy / "config.json").write_text(json.dumps(config))
    first, _ = import_base(rc, "tiny", str(tiny_model))
    second, existed = import_base(rc, "tiny", str(copy))
    assert not existed and int(second.version) == int(first.version) + 1


def test_adapter_lineage_and_show(rc, tiny_model: Path, tiny_adapter: Path) -> None:
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.catalog import show

    base, _ = import_base(rc, "tiny", str(tiny_model))
    mv = register_adapter(
        rc,
        "tiny-support",
        tiny_adapter,
        base_name="tiny",
        base_version=base.version,
        method="qlora",
        dataset_digests={"train": "sha256:aa", "eval": "sha256:bb"},
        training_run_id="run123",
    )
    tags = mv.tags
    assert tags[Tag.KIND] == "adapter"
    assert tags[Tag.BASE_NAME] == "tiny" and tags[Tag.BASE_VERSION] == str(base.version)
    assert tags[Tag.BASE_DIGEST] == base.tags[Tag.CONTENT_DIGEST]
    assert tags[Tag.BASE_ARTIFACT_URI].endswith("/artifacts/hf_model")
    assert tags[Tag.CONTENT_DIGEST] == folder_sha256(tiny_adapter)
    assert json.loads(tags[Tag.DATASET_DIGESTS]) == {"train": "sha256:aa", "eval": "sha256:bb"}
    # adapter-only: the stored artifact holds exactly the adapter's files, no base weights
    from mlflow.artifacts import download_artifacts

    adapter_dir = Path(download_artifacts(tags[Tag.ARTIFACT_URI] + "/artifacts/adapter"))
    assert sorted(p.name for p in adapter_dir.iterdir()) == sorted(p.name for p in tiny_adapter.iterdir())

    chain = show(rc, "tiny-support")["lineage"][0]
    assert [step["model"] for step in chain] == ["tiny-support:1", f"tiny:{base.version}"]
    assert chain[0]["method"] == "qlora" and chain[0]["training_run_id"] == "run123"
    assert chain[1]["source"] == str(tiny_model.resolve())


def test_adapter_refuses_bad_input(rc, tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base

    import_base(rc, "tiny", str(tiny_model))
    with pytest.raises(UsageError, match="method"):
        register_adapter(rc, "a", tiny_adapter, base_name="tiny", base_version=1, method="magic")
    with pytest.raises(InvalidInput, match="adapter_config.json"):
        register_adapter(rc, "a", tiny_model, base_name="tiny", base_version=1, method="lora")
    with pytest.raises(NotFound, match="no version 9"):
        register_adapter(rc, "a", tiny_adapter, base_name="tiny", base_version=9, method="lora")
    register_adapter(rc, "a", tiny_adapter, base_name="tiny", base_version=1, method="lora")
    with pytest.raises(Conflict, match="not a base model"):
        register_adapter(rc, "b", tiny_adapter, base_name="a", base_version=1, method="lora")
    assert [m.name for m in rc.mlflow.search_registered_models()] == ["a", "tiny"]


_LOAD = """
import json, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
print(json.dumps(model.predict(["what is the capital of france", "hello"], params={"max_new_tokens": 6})))
"""


def _load_in_fresh_process(rc, uri: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, rc.settings.mlflow_uri, uri],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference_generation(base: Path, adapter: Path | None, prompts: list[str]) -> list[str]:
    """Generate directly with transformers/peft: the independent computation to compare with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    outs = []
    for prompt in prompts:
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outs.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return outs


@pytest.mark.acceptance
def test_plain_mlflow_loads_base_and_adapter_by_alias(rc, tiny_model: Path, tiny_adapter: Path) -> None:
    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base
    from tuneloop.registry.promotion import promote

    base, _ = import_base(rc, "tiny", str(tiny_model))
    register_adapter(rc, "tiny-lora", tiny_adapter, base_name="tiny", base_version=base.version, method="lora")
    promote(rc, "tiny", base.version, "champion")
    promote(rc, "tiny-lora", 1, "champion")
    prompts = ["what is the capital of france", "hello"]

    base_out = _load_in_fresh_process(rc, "models:/tiny@champion")
    adapter_out = _load_in_fresh_process(rc, "models:/tiny-lora@champion")
    assert base_out == _reference_generation(tiny_model, None, prompts)
    assert adapter_out == _reference_generation(tiny_model, tiny_adapter, prompts)
    assert adapter_out != base_out  # the adapter really was applied


@pytest.mark.acceptance
def test_adapter_refuses_a_base_changed_after_registration(sqlite_rc, tiny_model: Path, tiny_adapter: Path) -> None:
    from mlflow.artifacts import download_artifacts

    from tuneloop.registry.adapters import register_adapter
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    mv = register_adapter(sqlite_rc, "tiny-lora", tiny_adapter, base_name="tiny", base_version=1, method="lora")
    stored_base = Path(download_artifacts(mv.tags[Tag.BASE_ARTIFACT_URI]))
    (stored_base / "config.json").write_text((stored_base / "config.json").read_text() + " ")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, sqlite_rc.settings.mlflow_uri, "models:/tiny-lora/1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "the base was changed after the adapter was registered" in proc.stderr
