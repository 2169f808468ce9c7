"""Metric values equal the reference libraries called directly; perplexity equals exp(mean NLL) from logits."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

DATA = REPO / "tests" / "data"


def _home(tmp_path: Path) -> dict[str, str]:
    return {"TUNELOOP_HOME": str(tmp_path / "home")}


def _text_pairs() -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (DATA / "pairs_text.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["prediction"] for r in rows], [r["reference"] for r in rows]


def _label_pairs() -> tuple[list[str], list[str]]:
    with open(DATA / "pairs_labels.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["prediction"] for r in rows], [r["reference"] for r in rows]


@pytest.mark.parametrize("stemming", [True, False])
@pytest.mark.parametrize("subset", ["all", "single", "empty_prediction"])
def test_rouge_bleu_chrf_equal_the_reference_libraries(stemming: bool, subset: str) -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    from tuneloop.monitors.metrics.scoring import ScoreOptions, score_pairs

    predictions, references = _text_pairs()
    if subset == "single":
        predictions, references = predictions[:1], references[:1]
    elif subset == "empty_prediction":
        predictions, references = predictions[2:3], references[2:3]
    ours = score_pairs(predictions, references, ["rouge", "bleu", "chrf"], ScoreOptions(rouge_stemming=stemming))

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stemming)
    direct = [scorer.score(r, p) for p, r in zip(predictions, references)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = sum(s[key].fmeasure for s in direct) / len(direct)
        assert ours.values[key] == pytest.approx(expected, abs=1e-9)
        assert 0.0 <= ours.values[key] <= 1.0
    assert ours.values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)
    assert ours.values["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score, abs=1e-9)
    assert ours.signatures["bleu"].startswith("nrefs:1|") and "tok:13a" in ours.signatures["bleu"]
    if subset == "empty_prediction":
        assert ours.values["rouge1"] == 0.0 and ours.values["bleu"] == 0.0


def test_unicode_tokenizer_scores_non_latin_text_that_the_default_drops() -> None:
    from rouge_score import rouge_scorer

    from tuneloop.monitors.metrics.scoring import ScoreOptions, score_pairs
    from tuneloop.monitors.metrics.text import UnicodeTokenizer

    prediction, reference = ["注文 は 発送 されました"], ["ご注文 は 発送 済み です"]
    default = score_pairs(prediction, reference, ["rouge1"])
    unicode = score_pairs(prediction, reference, ["rouge1"], ScoreOptions(rouge_tokenizer="unicode"))
    assert default.values["rouge1"] == 0.0  # rouge-score's tokenizer keeps [a-z0-9] only
    direct = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True, tokenizer=UnicodeTokenizer(use_stemmer=True)).score(
        reference[0], prediction[0]
    )
    assert (
        unicode.values["rouge1"] == pytest.approx(direct["rouge1"].fmeasure, abs=1e-9)
        and unicode.values["rouge1"] > 0.3
    )


def test_classification_metrics_equal_scikit_learn_with_normalised_labels() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    from tuneloop.monitors.metrics.classification import normalise_label
    from tuneloop.monitors.metrics.scoring import score_pairs

    predictions, references = _label_pairs()
    ours = score_pairs(predictions, references, ["f1", "accuracy", "exact_match"]).values
    truth = [r.strip().lower().strip(".") for r in references]
    guess = [p.strip().lower().strip(".") for p in predictions]
    assert [normalise_label(p) for p in predictions] == guess  # an independent normalisation agrees here
    labels = sorted(set(truth))
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, guess), abs=1e-9)
    assert ours["f1_macro"] == pytest.approx(
        f1_score(truth, guess, labels=labels, average="macro", zero_division=0), abs=1e-9
    )
    assert ours["f1_micro"] == pytest.approx(
        f1_score(truth, guess, labels=labels, average="micro", zero_division=0), abs=1e-9
    )
    assert ours["exact_match"] == pytest.approx(
        sum(p == r for p, r in zip(predictions, references)) / len(references), abs=1e-9
    )
    assert (
        ours["accuracy"] == 0.5 and ours["exact_match"] == 0.3
    )  # "Refund." and "  ACCOUNT " count only after normalising
    assert (
        ours["f1_micro"] > ours["accuracy"]
    )  # "banana" is outside the label set: wrong, but no class's false positive


def test_paired_bootstrap_and_wilson_interval() -> None:
    from scipy.stats import binomtest

    from tuneloop.monitors.metrics.stats import paired_bootstrap, wilson_interval

    a = [0.2, 0.4, 0.3, 0.5, 0.1, 0.3, 0.2, 0.4] * 4
    better = [x + 0.3 + 0.02 * (i % 3) for i, x in enumerate(a)]
    mean = lambda values: lambda idx: sum(values[i] for i in idx) / len(idx)
    same = paired_bootstrap(mean(a), mean(a), len(a))
    assert same.delta == 0 and not same.significant
    up = paired_bootstrap(mean(a), mean(better), len(a))
    assert up.significant and up.low > 0 and up.delta == pytest.approx(0.3 + 0.02 * 31 / 32) and up.p_value < 0.01
    # The same shift on every example: the interval has zero width and its bootstrap p-value (0) means
    # nothing; an exact sign test decides — 32 of 32 examples better is significant, 1 of 1 is not.
    constant = paired_bootstrap(mean(a), mean([x + 0.3 for x in a]), len(a))
    assert constant.zero_width and constant.significant and constant.p_value == pytest.approx(2 * 0.5**32)
    single = paired_bootstrap(mean([558.1]), mean([0.0]), 1)
    assert single.zero_width and not single.significant and single.p_value == 1.0
    noisy = paired_bootstrap(mean(a), mean([x + (0.01 if i % 2 else -0.01) for i, x in enumerate(a)]), len(a))
    assert not noisy.significant and noisy.low < 0 < noisy.high

    ours = wilson_interval(8, 10)
    reference = binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert (ours.low, ours.high) == (pytest.approx(reference.low, abs=1e-9), pytest.approx(reference.high, abs=1e-9))
    assert wilson_interval(6.5, 10).value == 0.65  # a tie counts half a win


def test_perplexity_equals_exp_mean_nll_from_the_logits(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.monitors.metrics.perplexity import encode, perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = [
        "hello world",
        "what is the capital of france paris is the capital of france",
        "yes",
        "the order is shipping thanks",
    ]
    prompts = ["hello", "what is the capital of france", "model question", "shipping order"]

    def independent(ids: list[int], first: int, window: int | None = None) -> tuple[float, int]:
        """NLL of tokens first.. predicted from up to `window` previous tokens, one forward per token window."""
        total, count = 0.0, 0
        for t in range(max(1, first), len(ids)):
            start = 0 if window is None else max(0, t + 1 - window)
            with torch.no_grad():
                logits = model(torch.tensor([ids[start : t + 1]])).logits[0, -2].double()
            total -= float(torch.log_softmax(logits, -1)[ids[t]])
            count += 1
        return total, count

    for with_prompts in (False, True):
        sequences = encode(tokenizer, texts, prompts if with_prompts else None)
        result = perplexity(model, sequences, batch_size=3)
        pairs = [independent(s.input_ids, s.first_scored) for s in sequences]
        expected = math.exp(sum(n for n, _ in pairs) / sum(c for _, c in pairs))
        assert result.perplexity == pytest.approx(expected, rel=1e-5)
        assert result.tokens == [c for _, c in pairs]

    # Sliding window: with stride 1 every token sees exactly `window - 1` previous tokens.
    sequences = encode(tokenizer, texts)
    windowed = perplexity(model, sequences, batch_size=2, window=4, stride=1)
    pairs = [independent(s.input_ids, s.first_scored, window=4) for s in sequences]
    assert windowed.perplexity == pytest.approx(math.exp(sum(n for n, _ in pairs) / sum(c for _, c in pairs)), rel=1e-5)
    assert windowed.tokens == [c for _, c in pairs]
    # A larger stride still scores every token once.
    assert perplexity(model, sequences, window=4, stride=3).tokens == windowed.tokens


def test_score_command_prints_metric_names_as_json_keys(tmp_path: Path) -> None:
    import sacrebleu

    result = run_cli(
        "eval",
        "score",
        "--predictions",
        str(DATA / "pairs_text.jsonl"),
        "--metrics",
        "rouge,bleu,chrf",
        "--json",
        env=_home(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert list(values) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"]
    predictions, references = _text_pairs()
    assert values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)

    labels = run_cli(
        "eval",
        "score",
        "--predictions",
        str(DATA / "pairs_labels.csv"),
        "--metrics",
        "f1,accuracy,exact_match",
        "--json",
        env=_home(tmp_path),
    )
    assert labels.returncode == 0, labels.stderr
    assert set(json.loads(labels.stdout)) == {"f1_macro", "f1_micro", "accuracy", "exact_match"}


@pytest.mark.parametrize(
    ("content", "metrics", "expected"),
    [
        (b'{"prediction": "a", "reference": "a"}\n{"prediction": "b"}\n', "bleu", ":2: missing `reference`"),
        (
            b'{"prediction": "a", "reference": "a"}\n{"prediction": "caf\xe9", "reference": "x"}\n',
            "bleu",
            ":2: byte 0xe9 at column 20 is not UTF-8",
        ),
        (b'{"prediction": "a", "reference": "a"}\n', "rouge,bleu,meteor", "unknown metric(s): meteor"),
        (b"", "bleu", "holds no prediction/reference pairs"),
        (b'{"prediction": "a", "reference": "a"}\n{not json\n', "bleu", ":2: not valid JSON"),
        (b'{"prediction": 3, "reference": "a"}\n', "accuracy", ":1: `prediction` must be text"),
    ],
)
def test_bad_predictions_files_fail_with_file_and_line(
    tmp_path: Path, content: bytes, metrics: str, expected: str
) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    result = run_cli("eval", "score", "--predictions", str(path), "--metrics", metrics, env=_home(tmp_path))
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    if "unknown metric" not in expected:
        assert str(path) in result.stderr


def test_bad_csv_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    path.write_text("prediction,reference\nrefund,refund\nshipping\n", encoding="utf-8")
    result = run_cli("eval", "score", "--predictions", str(path), "--metrics", "accuracy", env=_home(tmp_path))
    assert result.returncode == 1 and f"{path}:3: missing `reference`" in result.stderr


def test_rouge_split_across_processes_equals_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from rouge_score import rouge_scorer

    from tuneloop.monitors.metrics import text

    predictions, references = _text_pairs()
    monkeypatch.setattr(text, "PARALLEL_MIN_PAIRS", 4)  # 8 pairs -> 2 worker processes
    ours = text.rouge_per_pair(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(text.ROUGE_TYPES), use_stemmer=True)
    for key in text.ROUGE_TYPES:
        assert ours[key] == [scorer.score(r, p)[key].fmeasure for p, r in zip(predictions, references)]
