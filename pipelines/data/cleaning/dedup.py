"""Exact and near-duplicate detection, and a reproducible, leak-free train/eval split.

Exact duplicates compare a normalised form (Unicode NFC, case-folded, whitespace collapsed). Near
duplicates use MinHash over word 3-gram shingles with LSH (datasketch) to find candidates, then the
exact Jaccard similarity of the shingle sets to confirm them, so a reported pair really is at or
above the threshold; LSH searches below the threshold (`LSH_MARGIN`) so that pairs just above it are
rarely missed. The split assigns whole groups of near-duplicates to one side, by a seeded hash,
stratified by label where rows carry one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence

NUM_PERM = 128
LSH_MARGIN = 0.2  # LSH looks for candidates this far below the threshold: its misses near it become rare


def normalise(text: str) -> str:
    """NFC and collapsed whitespace: what curation writes back (meaning-preserving)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def comparable(text: str) -> str:
    """The form duplicates are compared in: `normalise` plus case folding."""
    return normalise(text).casefold()


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    """For each text, the index of the first earlier text with the same comparable form (None: first of its kind)."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, text in enumerate(texts):
        key = hashlib.sha256(comparable(text).encode()).hexdigest()
        out.append(first.get(key))
        first.setdefault(key, i)
    return out


def shingles(text: str, n: int = 3) -> set[str]:
    words = re.findall(r"\w+", comparable(text))
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, *, seed: int = 1) -> list[int | None]:
    """For each text, the index of an earlier text it near-duplicates (Jaccard of word 3-grams ≥ threshold)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=max(0.3, threshold - LSH_MARGIN), num_perm=NUM_PERM, weights=(0.1, 0.9))  # favour recall
    sets = [shingles(t) for t in texts]
    hashes = MinHash.bulk([[s.encode() for s in x] for x in sets], num_perm=NUM_PERM, seed=seed)
    out: list[int | None] = []
    for i, (shingle_set, mh) in enumerate(zip(sets, hashes, strict=True)):
        match = None
        for candidate in sorted(lsh.query(mh)):
            if jaccard(shingle_set, sets[candidate]) >= threshold:
                match = candidate
                break
        out.append(match)
        if match is None:
            lsh.insert(i, mh)  # only first-of-their-kind rows are indexed: each row points at a kept row
    return out


def split(
    keys: Sequence[str],
    eval_share: float,
    *,
    seed: int = 0,
    labels: Sequence[str | None] | None = None,
    groups: Sequence[int] | None = None,
) -> list[bool]:
    """True where a row goes to eval. Rows of one group (near-duplicates) stay together; within each label,
    the groups with the smallest seeded hashes go to eval until `eval_share` of the label's rows is reached."""
    groups = list(groups) if groups is not None else list(range(len(keys)))
    first_label: dict[int, str | None] = {}
    by_label: dict[str | None, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, group in enumerate(groups):
        label = first_label.setdefault(
            group, labels[i] if labels is not None else None
        )  # a group keeps its first label
        by_label[label][group].append(i)
    to_eval = [False] * len(keys)
    for members in by_label.values():
        total = sum(len(rows) for rows in members.values())
        target = round(eval_share * total)
        order = sorted(members, key=lambda g: hashlib.sha256(f"{seed}:{keys[members[g][0]]}".encode()).hexdigest())
        taken = 0
        for group in order:
            if taken >= target:
                break
            for i in members[group]:
                to_eval[i] = True
            taken += len(members[group])
    return to_eval


class DuplicateIndex:
    """Texts seen so far, growing one at a time: is a new text an exact or near duplicate of one of them?
    (What `tuneloop data synth` asks of each generated row, against the real data and the rows kept before.)"""

    def __init__(self, threshold: float = 0.8, *, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold, self.seed = threshold, seed
        self._exact: dict[str, int] = {}
        self._sets: list[set[str]] = []
        self._lsh = MinHashLSH(threshold=max(0.3, threshold - LSH_MARGIN), num_perm=NUM_PERM, weights=(0.1, 0.9))

    def __len__(self) -> int:
        return len(self._sets)

    def add_many(self, texts: Sequence[str]) -> None:
        from datasketch import MinHash

        sets = [shingles(t) for t in texts]
        hashes = MinHash.bulk([[s.encode() for s in x] for x in sets], num_perm=NUM_PERM, seed=self.seed)
        for text, shingle_set, mh in zip(texts, sets, hashes, strict=True):
            self._insert(text, shingle_set, mh)

    def match(self, text: str) -> tuple[str, int] | None:
        """("exact" | "near", index of the earlier text) or None."""
        key = hashlib.sha256(comparable(text).encode()).hexdigest()
        if key in self._exact:
            return "exact", self._exact[key]
        shingle_set = shingles(text)
        for candidate in sorted(self._lsh.query(self._minhash(shingle_set))):
            if jaccard(shingle_set, self._sets[candidate]) >= self.threshold:
                return "near", candidate
        return None

    def add(self, text: str) -> int:
        shingle_set = shingles(text)
        return self._insert(text, shingle_set, self._minhash(shingle_set))

    def _minhash(self, shingle_set: set[str]):
        from datasketch import MinHash

        mh = MinHash(num_perm=NUM_PERM, seed=self.seed)
        mh.update_batch([s.encode() for s in shingle_set])
        return mh

    def _insert(self, text: str, shingle_set: set[str], mh) -> int:
        index = len(self._sets)
        self._exact.setdefault(hashlib.sha256(comparable(text).encode()).hexdigest(), index)
        self._sets.append(shingle_set)
        self._lsh.insert(index, mh)
        return index
