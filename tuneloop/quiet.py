"""Keep third-party libraries quiet: users see tuneloop's own output, not chatter they cannot act on."""

from __future__ import annotations

import logging
import warnings


def quiet_mlflow() -> None:
    """MLflow and friends chat on INFO and warn about things users cannot act on."""
    for name in ("mlflow", "alembic", "urllib3", "httpx", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*type hint.*", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
