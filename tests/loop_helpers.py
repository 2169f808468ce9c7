"""A tiny closed loop for the loop tests: the demo's stages on a tiny random model."""

from __future__ import annotations

from pathlib import Path


def tiny_config(tiny_model: Path):
    from tuneloop.demo.run import DemoConfig

    return DemoConfig(
        base_name="tiny",
        base_source=str(tiny_model),
        adapter="tiny-support",
        method="lora",
        train_rows=24,
        eval_rows=6,
        train_steps=6,
        retrain_steps=6,
        max_new_tokens=6,
        answer_tokens=6,
        window=100,
        reference_windows=3,
        calm_windows=2,
        drift_windows=4,
        learning_rate=0.01,
        batch_size=8,
        checkpoint_every=2,
        force_first_promotion="tiny random model: its answers are noise, there is no base to beat",
        shadow_pairs=0,  # most loop tests send traffic without a model server: nothing could shadow
    )


def ingest_directly(rc):
    from tuneloop.monitors.ingestion.records import parse_records, store

    def send(records: list[dict]) -> None:
        store(rc.stores, parse_records(records, 100_000), rc.models)

    return send
