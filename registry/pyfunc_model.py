"""The MLflow pyfunc model behind every tuneloop model version (MLflow "models from code").

`mlflow.pyfunc.load_model("models:/NAME@ALIAS").predict(["question", ...])` returns generated
text. A base version carries its Hugging Face folder as the artifact `hf_model`. An adapter version
carries only the adapter (`adapter`) and names its base by artifact URI and content digest in its
model config; the digest is verified on load, so a changed base is refused, not silently used.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

DEFAULT_MAX_NEW_TOKENS = 64


class BaseModelMismatch(RuntimeError):
    pass


def _resolve_base(model_config: dict[str, Any]) -> str:
    from tuneloop.digest import folder_sha256

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_config["base_artifact_uri"])
    actual = folder_sha256(local)
    if actual != model_config["base_digest"]:
        raise BaseModelMismatch(
            f"base model at {model_config['base_artifact_uri']} has digest {actual}, "
            f"expected {model_config['base_digest']}: the base was changed after the adapter was registered"
        )
    return local


class TextGenerator(PythonModel):
    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuneloop.registry.loading import load_kwargs

        config = context.model_config or {}
        if config.get("kind") == "adapter":
            base_folder = _resolve_base(config)
        else:
            base_folder = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(base_folder)
        model = AutoModelForCausalLM.from_pretrained(base_folder, **load_kwargs(config.get("quantization") or {}))
        if config.get("kind") == "adapter":
            from peft import PeftModel

            from tuneloop.quiet import PEFT_READS_A_DEPRECATED_NAME, ignoring

            with ignoring(*PEFT_READS_A_DEPRECATED_NAME):
                model = PeftModel.from_pretrained(model, context.artifacts["adapter"])
        self.model = model.eval()

    def _encode(self, prompt: str) -> Any:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        return self.tokenizer(prompt, return_tensors="pt")

    def generate(self, prompt: str, max_new_tokens: int, temperature: float) -> str:
        import torch

        inputs = self._encode(prompt)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **sampling,
            )
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        temperature = float(params.get("temperature", 0.0))
        return [self.generate(p, max_new_tokens, temperature) for p in _prompts(model_input)]


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column]]
    if isinstance(model_input, dict):
        value = model_input.get("prompt")
        if value is None:
            raise ValueError("a dict input needs a `prompt`: a string or a list of strings")
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in model_input]


set_model(TextGenerator())
