"""Every tuneloop setting, declared once, typed, with its environment variable and default.

Sources, highest priority first: explicit overrides, `TUNELOOP_*` environment variables
(nested with `__`, e.g. `TUNELOOP_STORES__DATABASE_URL`), then `tuneloop.toml` in the current
directory, or the file given with `--config` (or `TUNELOOP_CONFIG`). `platform/tuneloop.toml` documents every key.
"""

from __future__ import annotations

import getpass
import os
import re
import tomllib
from collections.abc import Iterable
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tuneloop.errors import ConfigError

CONFIG_FILE_NAME = "tuneloop.toml"
CONFIG_PATH_ENV = "TUNELOOP_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("tuneloop_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Section):
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking and registry store. Default: sqlite:///<home>/mlflow.db"
    )
    database_url: str | None = Field(
        None, description="tuneloop's own tables (audit, locks, records, jobs). Default: sqlite:///<home>/tuneloop.db"
    )
    artifact_root: str | None = Field(
        None, description="Where MLflow artifacts go: a folder or an s3:// URI. Default: <home>/artifacts"
    )
    migrate_on_start: bool = Field(
        True,
        description="Migrate both databases on first use; false: refuse a database that is behind "
        "(run `tuneloop db upgrade` in a release step)",
    )
    alias_cache_seconds: float = Field(
        5.0,
        ge=0.0,
        le=300.0,
        description="How long a resolved NAME@ALIAS is trusted before the registry is asked "
        "again (a move made through tuneloop in this process is seen at once)",
    )


class MonitorSettings(_Section):
    evidently_reports: Literal["drift", "off"] = Field(
        "drift",
        description="`drift`: log an Evidently report (column summaries, text descriptors) of every drifted "
        "window in the monitor's run (about 4 MB each; the first one in a process imports Evidently, "
        "about 5 s); `off`: only on `tuneloop monitor report`",
    )


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address the MLflow UI (and later the ingest API) binds to")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the MLflow server started by `tuneloop up`")
    mlflow_jobs: bool = Field(
        False,
        description="Let the MLflow server run its job runner (judges and scorers launched from the UI, prompt "
        "optimization): eight more processes and about 2 GB; tuneloop itself needs none of it",
    )


class IngestSettings(_Section):
    port: int = Field(8765, ge=1, le=65535, description="Port of the ingest API")
    tokens: list[SecretStr] = Field(
        default_factory=list, description="Bearer tokens accepted by the ingest API (scope `ingest`)"
    )
    max_body_bytes: int = Field(10_000_000, ge=1024, description="Largest request body the ingest API reads (bytes)")
    max_batch: int = Field(1000, ge=1, description="Most records in one ingest request")
    max_text_chars: int = Field(100_000, ge=16, description="Longest prompt, output, label or reference (characters)")


class ServeSettings(_Section):
    port: int = Field(8767, ge=1, le=65535, description="Port of `tuneloop serve` (the OpenAI-compatible API)")
    tokens: list[SecretStr] = Field(
        default_factory=list, description="Bearer tokens accepted by `tuneloop serve` (scope `serve`)"
    )
    reload_seconds: float = Field(
        5.0, ge=0.0, le=3600.0, description="How old a server's view of which version holds an alias may be"
    )
    max_tokens: int = Field(512, ge=1, description="Most completion tokens one request may ask for")
    max_prompt_tokens: int = Field(2048, ge=1, description="Longest prompt, in tokens, after the chat template")
    max_queue: int = Field(256, ge=1, description="Requests waiting per loaded model before 429")
    max_batch: int = Field(16, ge=1, le=512, description="Most requests generated together")
    collect_ms: float = Field(5.0, ge=0.0, le=1000.0, description="How long a batch collects requests before it runs")
    max_versions: int = Field(
        8, ge=1, description="Versions kept loaded; the least recently used leaves first (never an alias's holder)"
    )
    quantized_bases: bool = Field(
        True, description="Serve a QLoRA version on the 4-bit base it was trained on (false: on the fp32 base)"
    )
    capture: bool = Field(
        True, description="Store every answer as a production record (false only to measure what capture costs)"
    )
    trace_share: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of served requests exported as MLflow traces to `<experiment_prefix>-serve-NAME` "
        "(drawn per request; its shadow answer follows it; 0 turns tracing off)",
    )
    trace_redact: bool = Field(
        False, description="Replace prompts and answers in traces by their length (records keep the text)"
    )
    trace_queue: int = Field(
        10_000, ge=1, description="Traces waiting for export before new ones are dropped (and counted as lost)"
    )
    figures_seconds: float = Field(
        60.0, ge=0.5, le=3600.0, description="How often a server logs its per-version figures to its serving run"
    )


class FeedbackSettings(_Section):
    trusted_reviewers: list[str] = Field(
        default_factory=list,
        description="Source ids of MLflow assessments that may become training feedback (the MLflow UI has no "
        "login here: any other source's assessments are stored and shown, never trained on)",
    )
    sync_seconds: float = Field(
        30.0,
        ge=0.5,
        le=86_400.0,
        description="How often `tuneloop serve` exchanges feedback and assessments with MLflow",
    )
    review_days: float = Field(
        7.0, gt=0.0, le=365.0, description="How far back the poll reads traces for assessments added in the MLflow UI"
    )


class SchedulerSettings(_Section):
    port: int = Field(8766, ge=1, le=65535, description="Port of the scheduler's health endpoint (GET /health)")
    lease_seconds: float = Field(
        30.0,
        ge=2.0,
        le=3600.0,
        description="Lease of the active scheduler and of each "
        "retraining worker; a crashed holder is replaced after at most this long",
    )
    tick_seconds: float = Field(
        5.0, ge=0.2, le=600.0, description="How often the scheduler dispatches retrains and notifications"
    )
    max_workers: int = Field(1, ge=1, le=64, description="Retraining runs trained at the same time")


class NotifySettings(_Section):
    timeout_seconds: float = Field(5.0, gt=0.0, le=120.0, description="Timeout of one webhook delivery attempt")
    max_attempts: int = Field(8, ge=1, le=100, description="Attempts before a notification is marked failed")
    retry_base_seconds: float = Field(2.0, gt=0.0, le=3600.0, description="Backoff: attempt n waits base * 2^(n-1)")


class KubernetesSettings(_Section):
    """Where `tuneloop train --backend kubernetes` submits its Job (the chart's `training` values, per recipe)."""

    namespace: str = Field("default", description="Namespace of the training Job")
    context: str = Field("", description="kubectl context; empty: the current one")
    image: str = Field(
        "ghcr.io/tuneloop/tuneloop:0.1.0-cuda", description="Training image (the Dockerfile with CUDA=1)"
    )
    gpus: int = Field(
        1,
        ge=0,
        le=64,
        description="GPUs of one node the Job requests (`nvidia.com/gpu`); torchrun runs one process each",
    )
    stores_secret: str = Field("tuneloop-stores", description="Secret with keys mlflow-uri and database-url")
    s3_secret: str = Field(
        "tuneloop-s3", description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; empty: pod identity"
    )
    s3_endpoint: str = Field("", description="S3-compatible endpoint (MinIO); empty: AWS S3")
    artifact_root: str = Field("s3://tuneloop/artifacts", description="The cluster's artifact root (as the chart's)")
    data_claim: str = Field("", description="PersistentVolumeClaim mounted at /data for recipes whose data lives there")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the Job must run on")
    service_account: str = Field("", description="Service account of the Job's pod; empty: the namespace default")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=CONFIG_FILE_NAME,
    )

    home: Path = Field(Path(".tuneloop"), description="Folder of the embedded stores")
    cache_dir: Path = Field(
        Path("~/.cache/tuneloop"), description="Converted models (GGUF -> safetensors), keyed by content digest"
    )
    actor: str = Field("", description="Name recorded in the audit trail. Default: the OS user")
    experiment_prefix: str = Field("tuneloop", description="Prefix of the MLflow experiments tuneloop creates")
    hf_token: SecretStr | None = Field(None, description="Hugging Face token (never logged)")
    stores: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    monitors: MonitorSettings = Field(default_factory=MonitorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file.get() or os.environ.get(CONFIG_PATH_ENV) or CONFIG_FILE_NAME
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @field_validator("home", "cache_dir")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    # Resolved store locations -------------------------------------------------------------
    @cached_property
    def mlflow_uri(self) -> str:
        return self.stores.mlflow_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @cached_property
    def database_url(self) -> str:
        return self.stores.database_url or f"sqlite:///{self.home / 'tuneloop.db'}"

    @cached_property
    def artifact_root(self) -> str:
        root = self.stores.artifact_root
        if root and "://" in root:
            return root.rstrip("/")
        return Path(root or self.home / "artifacts").expanduser().resolve().as_uri()

    @property
    def actor_name(self) -> str:
        if self.actor:
            return self.actor
        try:
            return getpass.getuser()
        except (KeyError, OSError):  # no user database entry (containers)
            return "unknown"

    # Secrets ---------------------------------------------------------------------------
    def secret_values(self) -> list[str]:
        """Every secret these settings hold, so logs and reports can be scrubbed of them."""
        secrets = [token for token, _ in self.configured_tokens()]
        if self.hf_token:
            secrets.append(self.hf_token.get_secret_value())
        for url in (self.stores.mlflow_uri, self.stores.database_url, self.stores.artifact_root):
            password = urlsplit(url).password if url and "://" in url else None
            if password:
                secrets.append(password)
        return [s for s in secrets if s]

    def configured_tokens(self) -> list[tuple[str, str]]:
        """(token, scope) of every bearer token set in these settings."""
        return [(t.get_secret_value(), "serve") for t in self.serve.tokens] + [
            (t.get_secret_value(), "ingest") for t in self.ingest.tokens
        ]

    def scrub(self, text: str) -> str:
        """`text` with every secret these settings hold, and every URL's password, masked."""
        return mask_secrets(text, self.secret_values())

    def public_dict(self) -> dict[str, Any]:
        """The settings as a dict with every secret masked: the only form fit to print or log."""
        data = self.model_dump(mode="json")
        data["ingest"]["tokens"] = ["***"] * len(self.ingest.tokens)
        data["serve"]["tokens"] = ["***"] * len(self.serve.tokens)
        data["hf_token"] = "***" if self.hf_token else None
        data["resolved"] = {
            "mlflow_uri": redact_url(self.mlflow_uri),
            "database_url": redact_url(self.database_url),
            "artifact_root": redact_url(self.artifact_root),
        }
        for key in ("mlflow_uri", "database_url", "artifact_root"):
            data["stores"][key] = redact_url(data["stores"][key]) if data["stores"][key] else None
        return data


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@/\s]+@")
TOKEN_PREFIX = "tlk_"  # of the tokens `tuneloop tokens create` issues: only their hashes are stored
_ISSUED_TOKEN = re.compile(rf"{TOKEN_PREFIX}[A-Za-z0-9_-]{{20,}}")  # masked by shape, as no store knows them


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the password of every URL in it, every token tuneloop issued and each of `secrets`
    replaced by `***`: the one masker of everything tuneloop prints, logs or stores."""
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    text = _ISSUED_TOKEN.sub("***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """`postgresql://u:pw@h/db` -> `postgresql://u:***@h/db`; anything else unchanged."""
    return mask_secrets(url)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings, turning every validation problem into one ConfigError that lists them all."""
    token = None
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file `{path}` does not exist", hint="pass an existing tuneloop.toml to --config")
        token = _config_file.set(path.resolve())
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"`{where}`: {err['msg']}")
        raise ConfigError(
            "invalid settings:\n  " + "\n  ".join(problems),
            hint="fix tuneloop.toml or the TUNELOOP_* environment variables (see platform/tuneloop.toml)",
        ) from None
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:  # a malformed or unreadable TOML file
        raise ConfigError(f"cannot read settings: {exc}", hint="check the syntax of tuneloop.toml") from None
    finally:
        if token is not None:
            _config_file.reset(token)
