"""Shared fixtures: tiny random models, and registry stores on SQLite or PostgreSQL.

Stores are migrated once per session into a template (a SQLite file, or a PostgreSQL database
created with `CREATE DATABASE ... TEMPLATE ...`) and copied for each test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # xdist workers share the cores: one torch thread pool per core, not per worker
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TUNELOOP_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
BACKENDS = [b.strip() for b in os.environ.get("TUNELOOP_TEST_BACKENDS", "sqlite,postgres").split(",") if b.strip()]

_MIGRATE = """
import sys
from tuneloop.settings import Settings, StoreSettings
from tuneloop.registry.tracking import connect
from tuneloop.store.engine import get_engine
s = Settings(home=sys.argv[1], stores=StoreSettings(mlflow_uri=sys.argv[2], database_url=sys.argv[3]))
connect(s)
get_engine(s.database_url)
"""


def migrate_in_subprocess(home: Path, mlflow_uri: str, database_url: str) -> None:
    """Migrate in a child process so no pooled connection keeps a template database busy."""
    subprocess.run([sys.executable, "-c", _MIGRATE, str(home), mlflow_uri, database_url], check=True, cwd=REPO)


# --- tiny random models --------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
WORDS = [
    "the",
    "a",
    "is",
    "of",
    "to",
    "and",
    "in",
    "what",
    "capital",
    "france",
    "paris",
    "hello",
    "world",
    "model",
    "answer",
    "question",
    "ticket",
    "refund",
    "order",
    "shipping",
    "account",
    "password",
    "reset",
    "please",
    "thanks",
    "help",
    "yes",
    "no",
]


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,  # logits big enough that adapters can move the loss far (std 0.02 caps them)
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_adapter(base_folder: Path, folder: Path, seed: int = 1) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at zero; give it weight so the adapter changes outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def chat_file(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A chat-format JSONL file, one user/assistant exchange per (question, answer) pair."""
    import json

    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in pairs
        )
    )
    return path


def tiny_lora_recipe(path: Path, data: Path, **sections: Any) -> Path:
    """A `lora` recipe for the tiny base `tiny:1` on `data`, its sections (`training`, `lora`) as given."""
    import yaml

    recipe = {"name": "tiny-lora", "method": "lora", "base": "tiny:1", "data": {"train": str(data), "max_length": 32}}
    path.write_text(yaml.safe_dump(recipe | sections))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "tiny-lora")


# --- stores ----------------------------------------------------------------------------------------
def _pg(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(statement)


class StoreFactory:
    """Fresh, migrated stores for one test, copied from this session's templates."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.created: list[str] = []
        tag = uuid.uuid4().hex[:8]
        if backend == "sqlite":
            self.template = root / "template"
            migrate_in_subprocess(
                self.template,
                f"sqlite:///{self.template / 'mlflow.db'}",
                f"sqlite:///{self.template / 'tuneloop.db'}",
            )
        else:
            self.templates = (f"tl_tmpl_mlflow_{tag}", f"tl_tmpl_own_{tag}")
            for name in self.templates:
                _pg(PG_ADMIN_URL, f"CREATE DATABASE {name}")
            migrate_in_subprocess(root / "pg-template", self._url(self.templates[0]), self._url(self.templates[1]))

    @staticmethod
    def _url(database: str, password: str | None = None) -> str:
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        if password:
            base = base.replace("postgresql://root@", f"postgresql://root:{password}@")
        return f"{base}/{database}"

    def settings_kwargs(self, home: Path, password: str | None = None) -> dict:
        """`Settings` arguments for fresh stores under `home` (PostgreSQL URLs may carry a password)."""
        from tuneloop.settings import StoreSettings

        if self.backend == "sqlite":
            home.mkdir(parents=True, exist_ok=True)
            for name in ("mlflow.db", "tuneloop.db"):
                shutil.copy(self.template / name, home / name)
            return {"home": home}
        tag = uuid.uuid4().hex[:10]
        names = (f"t_{tag}_mlflow", f"t_{tag}_own")
        for name, template in zip(names, self.templates, strict=True):
            _pg(PG_ADMIN_URL, f"CREATE DATABASE {name} TEMPLATE {template}")
            self.created.append(name)
        stores = StoreSettings(mlflow_uri=self._url(names[0], password), database_url=self._url(names[1], password))
        return {"home": home, "stores": stores}

    def env(self, home: Path) -> dict[str, str]:
        """The same, as TUNELOOP_* environment variables for a CLI subprocess."""
        kwargs = self.settings_kwargs(home)
        env = {"TUNELOOP_HOME": str(home)}
        if "stores" in kwargs:
            env["TUNELOOP_STORES__MLFLOW_URI"] = kwargs["stores"].mlflow_uri
            env["TUNELOOP_STORES__DATABASE_URL"] = kwargs["stores"].database_url
        return env

    def cleanup(self, final: bool = False) -> None:
        if self.backend != "postgres":
            return
        from tuneloop.store.engine import dispose_engines

        dispose_engines()
        names = self.created + (list(self.templates) if final else [])
        self.created = []
        for name in names:
            _pg(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _postgres_available() -> bool:
    import psycopg

    try:
        _pg(PG_ADMIN_URL, "SELECT 1")
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session", params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    backend = request.param
    if backend == "postgres" and not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; CI must run the PostgreSQL tests")
        pytest.skip("PostgreSQL is not reachable")
    factory = StoreFactory(backend, tmp_path_factory.mktemp(f"stores-{backend}"))
    yield factory
    factory.cleanup(final=True)


@pytest.fixture
def stores(store_factory: StoreFactory):
    yield store_factory
    store_factory.cleanup()


@pytest.fixture
def rc(stores: StoreFactory, tmp_path: Path):
    """A RegistryClient on fresh stores of the parametrised backend."""
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    return RegistryClient(Settings(**stores.settings_kwargs(tmp_path / "home")))


@pytest.fixture
def sqlite_rc(tmp_path: Path):
    """A RegistryClient on fresh embedded stores (migrated on first use)."""
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    return RegistryClient(Settings(home=tmp_path / "home"))


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run the installed `tuneloop` console script; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("tuneloop")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loop_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings by environment, so the worker subprocesses see the same stores as the test."""
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import load_settings
    from tuneloop.store.engine import dispose_engines

    for key in [k for k in os.environ if k.startswith("TUNELOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELOOP_NOTIFY__RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("TUNELOOP_NOTIFY__TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield RegistryClient(load_settings())
    dispose_engines()


@pytest.fixture
def empty_postgres_databases():
    """(MLflow URL, tuneloop URL) of two new PostgreSQL databases without any table; dropped afterwards."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; CI must run the PostgreSQL tests")
        pytest.skip("PostgreSQL is not reachable")
    names = [f"t_{uuid.uuid4().hex[:10]}_{kind}" for kind in ("mlflow", "own")]
    for name in names:
        _pg(PG_ADMIN_URL, f"CREATE DATABASE {name}")
    yield tuple(StoreFactory._url(name) for name in names)
    for name in names:
        _pg(PG_ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# MLflow 3 opens `sqlite:///mlflow.db` (and `./mlruns`) in the working directory when no tracking URI is
# set: that is how a stray mlflow.db once got committed. Tests run from the repository, so anything that
# reaches MLflow without tuneloop's stores shows up here and fails the run.
_STRAYS = [REPO / "mlflow.db", REPO / "mlruns"]
_STRAYS_BEFORE = {p for p in _STRAYS if p.exists()}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller checks once, after every worker
    strays = [str(p) for p in _STRAYS if p.exists() and p not in _STRAYS_BEFORE]
    if strays:
        session.config.get_terminal_writer().line(
            f"error: the tests wrote MLflow's default store into the repository: {', '.join(strays)} "
            "(some code reached MLflow without tuneloop's tracking URI)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def eventually(probe: Callable[[], Any], what: str = "the condition", timeout_s: float = 30) -> Any:
    """`probe()`'s first truthy value, asked every 0.2 s; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never happened within {timeout_s:g} s: {what}")


class Up:
    """A running `tuneloop up --no-scheduler`: `url` is its MLflow server's; `stop()` ends its process group."""

    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process, self.url = process, url

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(30)


@contextlib.contextmanager
def tuneloop_up(env: dict[str, str] | None = None) -> Iterator[Up]:
    """`tuneloop up --no-scheduler` (the MLflow server and UI, the ingest API) on free ports, as its own process
    group, stopped on leaving (`env`: the process's environment, default this one's)."""
    from tuneloop.services import wait_healthy

    port = free_port()
    command = ["up", "--port", str(port), "--ingest-port", str(free_port()), "--scheduler-port", str(free_port())]
    up = Up(
        subprocess.Popen(
            [str(Path(sys.executable).with_name("tuneloop")), *command, "--no-scheduler"],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        f"http://127.0.0.1:{port}",
    )
    try:
        wait_healthy(up.url, up.process)
        yield up
    finally:
        up.stop()
