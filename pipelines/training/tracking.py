"""Per-step metrics into the active MLflow run: loss, learning rate, grad norm, tokens per second."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

LOGGED = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "eval_loss": "eval/loss",
    "rewards/margins": "train/dpo_margin",
    "rewards/accuracies": "train/dpo_accuracy",
}


class MlflowStepMetrics(TrainerCallback):
    """Logs each Trainer log event at its global step. Steps recomputed after a resume are logged
    again at the same step numbers, so the history has no gaps."""

    def __init__(self) -> None:
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_time = time.perf_counter()
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        import mlflow

        if not logs or mlflow.active_run() is None:
            return
        metrics = {name: float(logs[key]) for key, name in LOGGED.items() if isinstance(logs.get(key), (int, float))}
        now = time.perf_counter()
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if self._last_time is not None and tokens > self._last_tokens and now > self._last_time:
            metrics["train/tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_time)
            logs["tok/s"] = round(metrics["train/tokens_per_second"], 1)  # shown by the progress bar
        self._last_time, self._last_tokens = now, tokens
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


class ProgressBar(TrainerCallback):
    """One line that shows step, loss, tokens per second and ETA (replaces the Trainer's log dump)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs:
            shown = {k: logs[k] for k in ("loss", "tok/s") if k in logs}
            if shown:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
