"""Train in a child process and SIGKILL itself at a chosen step: the crash the resume test recovers from."""

from __future__ import annotations

import json
import os
import signal
import sys

from transformers import TrainerCallback


class KillAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_begin(self, args, state, control, **kwargs):
        import mlflow

        print("RUN_ID", mlflow.active_run().info.run_id, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(settings_json: str, recipe_json: str, kill_at: int) -> None:
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import train
    from tuneloop.registry.client import RegistryClient
    from tuneloop.settings import Settings

    rc = RegistryClient(Settings.model_validate_json(settings_json))
    train(parse_recipe(json.loads(recipe_json)), rc, callbacks=[KillAtStep(kill_at)])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
