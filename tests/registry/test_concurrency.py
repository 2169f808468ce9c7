"""Four processes promote versions of one model at once; the audit trail must stay a single chain."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.registry_helpers import make_versions
from tuneloop.registry import gates
from tuneloop.registry.promotion import history

PROCESSES, ROUNDS, VERSIONS = 4, 25, 8


@pytest.mark.acceptance
def test_concurrent_promotions_serialise(rc) -> None:
    # odd versions pass the gate, even ones fail it
    make_versions(rc, "contested", [{"accuracy": 0.9 if v % 2 else 0.3} for v in range(1, VERSIONS + 1)])
    gates.set_policy(rc, "contested", ["accuracy >= 0.5"])
    settings_json = rc.settings.model_dump_json()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrency_worker", settings_json, str(w), str(ROUNDS), str(VERSIONS)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outcomes.append(json.loads(out.strip().splitlines()[-1]))

    moves, broken = history(rc, "contested")
    assert broken == []
    assert all(m.kind == "promote" for m in moves)
    assert len(moves) == sum(o["moved"] for o in outcomes)
    assert sum(o["refused"] for o in outcomes) > 0  # the test really exercised refusals
    assert all(v % 2 == 0 for o in outcomes for v in o["refused_versions"])
    previous = None
    for move in moves:
        assert move.from_version == previous, (
            f"entry {move.id} starts at v{move.from_version}, previous ended at v{previous}"
        )
        assert move.to_version % 2 == 1  # refused promotions moved nothing
        previous = move.to_version
    final = rc.mlflow.get_model_version_by_alias("contested", "champion")
    assert int(final.version) == moves[-1].to_version
