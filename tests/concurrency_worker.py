"""One promoter process for the concurrency test: N promotions of random versions of one model."""

from __future__ import annotations

import json
import random
import sys


def main(settings_json: str, worker: int, rounds: int, versions: int) -> None:
    from tuneloop.errors import GateFailed
    from tuneloop.registry.client import RegistryClient
    from tuneloop.registry.promotion import promote
    from tuneloop.settings import Settings

    rc = RegistryClient(Settings.model_validate_json(settings_json))
    rng = random.Random(worker)
    outcome = {"moved": 0, "refused": 0, "noop": 0, "refused_versions": []}
    for _ in range(rounds):
        version = rng.randint(1, versions)
        try:
            result = promote(rc, "contested", version, "champion")
        except GateFailed:
            outcome["refused"] += 1
            outcome["refused_versions"].append(version)
            continue
        outcome["moved" if result.move else "noop"] += 1
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
