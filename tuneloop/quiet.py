"""Keep third-party libraries quiet: users see tuneloop's own output, not chatter they cannot act on.

`tuneloop -v` (or `TUNELOOP_VERBOSE=1`) lets the libraries' logs, warnings and progress bars through.
Everything here travels by environment variable too, so the worker and training processes a command
starts are as quiet as the command itself.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "TUNELOOP_VERBOSE"

# Read by the libraries when they are first imported, so set before any of them is.
LIBRARY_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights", "Writing model shards"
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # TRL's "Tokenizing train dataset" and friends
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts"
    "TRANSFORMERS_VERBOSITY": "error",  # "[transformers] The following layers were not sharded"
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

# Loggers whose warnings name nothing a user of tuneloop can do.
QUIET_LOGGERS = {
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
    "urllib3": logging.WARNING,
    "httpx": logging.WARNING,
    "transformers.modeling_utils": logging.WARNING,
    "bitsandbytes": logging.ERROR,  # "Failed to load CPU gemm_4bit_forward from kernels-community": a fallback
    "kernels": logging.ERROR,  # "Skipping publisher trust check ... offline mode": offline is tuneloop's default
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def quiet_libraries(*, verbose_requested: bool = False) -> None:
    """Called once by the CLI before any command runs (and so before any heavy import)."""
    if verbose_requested:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    quiet_mlflow()


def quiet_mlflow() -> None:
    """MLflow and friends chat on INFO and warn about things users cannot act on."""
    if verbose():
        return
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


@contextmanager
def ignoring(message: str, category: type[Warning] = UserWarning) -> Iterator[None]:
    """Silence one warning around the call that raises it (unless verbose): a warning that names nothing a
    user of tuneloop can act on is silenced where it arises, never process-wide."""
    with warnings.catch_warnings():
        if not verbose():
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


# PEFT (0.18) reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model.
PEFT_READS_A_DEPRECATED_NAME = (r"`is_gradient_checkpointing` is deprecated", FutureWarning)


@contextmanager
def without_bars(module: str) -> Iterator[None]:
    """The progress bars a library module draws with its own `tqdm` (one it imported, which no setting
    turns off) are hidden around the call (unless verbose)."""
    import functools
    import importlib

    target = importlib.import_module(module)
    original = getattr(target, "tqdm")  # noqa: B009 - a module attribute mypy cannot see
    if not verbose():
        setattr(target, "tqdm", functools.partial(original, disable=True))  # noqa: B010
    try:
        yield
    finally:
        setattr(target, "tqdm", original)  # noqa: B010
