"""Curation with planted problems: PII of each kind (and look-alikes that must stay), exact and near
duplicates, broken rows, a leak-free stratified split; every change counted, nothing else touched."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tuneloop.pipelines.data.cleaning import dedup, pii

PII_CASES = [
    ("write to jane.doe+news@example.co.uk today", "write to [EMAIL] today", "email"),
    ("card 4111 1111 1111 1111 please", "card [CARD] please", "card"),
    ("card 5500-0000-0000-0004 please", "card [CARD] please", "card"),
    ("pay to DE89 3704 0044 0532 0130 00 now", "pay to [IBAN] now", "iban"),
    ("pay to GB29NWBK60161331926819 now", "pay to [IBAN] now", "iban"),
    ("from 192.168.1.20 at noon", "from [IP] at noon", "ip"),
    ("from 2001:db8::ff00:42:8329 at noon", "from [IP] at noon", "ip"),
    ("call +49 30 1234 5678 soon", "call [PHONE] soon", "phone"),
    ("call (030) 123-4567 soon", "call [PHONE] soon", "phone"),
]
LOOK_ALIKES = [
    "order 4111111111111112 is late",  # 16 digits failing Luhn: an order number, not a card
    "ref DE89370400440532013001 is wrong",  # IBAN shape, bad mod-97 checksum
    "score 999.1.1.1 is not an address",
    "delivered on 2026-11-29 at 10:30",
    "order 0151123456 shipped",  # a bare run of digits
    "me at home, not at example dot com",
]


@pytest.mark.parametrize(("text", "expected", "kind"), PII_CASES)
def test_each_kind_of_pii_is_replaced_by_its_placeholder(text: str, expected: str, kind: str) -> None:
    scrubbed, found = pii.scrub(text)
    assert scrubbed == expected and dict(found) == {kind: 1}


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert pii.scrub(text) == (text, {})


def test_luhn_and_iban_checksums_match_their_definitions() -> None:
    assert pii.luhn_valid("79927398713") and not pii.luhn_valid("79927398710")  # the textbook example
    assert pii.iban_valid("GB82 WEST 1234 5698 7654 32") and not pii.iban_valid("GB82 WEST 1234 5698 7654 33")


def _sentence(rng: random.Random, n: int = 20) -> str:
    words = [
        "order",
        "refund",
        "parcel",
        "late",
        "broken",
        "account",
        "password",
        "address",
        "invoice",
        "plan",
        "cancel",
        "today",
        "tomorrow",
        "please",
        "thanks",
        "kettle",
        "lamp",
        "desk",
        "berlin",
        "lyon",
    ]
    return " ".join(rng.choice(words) + str(rng.randint(0, 40)) for _ in range(n))


def test_near_duplicates_are_found_and_confirmed_by_exact_jaccard() -> None:
    rng = random.Random(4)
    texts = [_sentence(rng, 40) for _ in range(300)]  # one word changed in 40: Jaccard of 3-grams 35/41 = 0.85
    planted = {}
    for source in rng.sample(range(300), 20):
        words = texts[source].split()
        words[rng.randrange(len(words))] = "changed"
        planted[len(texts)] = source
        texts.append(" ".join(words))
    found = dedup.near_duplicates(texts, 0.8)
    for i, j in enumerate(found):
        if j is not None:  # every reported pair really is at or above the threshold
            assert dedup.jaccard(dedup.shingles(texts[i]), dedup.shingles(texts[j])) >= 0.8
    assert {i: found[i] for i in planted} == planted
    assert all(found[i] is None for i in range(300))  # random sentences share few 3-grams
    assert dedup.exact_duplicates(["A  b", "a b", "a\u00a0b ", "a c"]) == [None, 0, 0, None]


def test_split_is_reproducible_stratified_and_keeps_groups_together() -> None:
    keys = [f"row {i}" for i in range(1000)]
    labels = ["refund" if i % 4 == 0 else "shipping" for i in range(1000)]
    groups = [i // 2 for i in range(1000)]  # pairs of near duplicates
    first = dedup.split(keys, 0.2, seed=3, labels=labels, groups=groups)
    assert first == dedup.split(keys, 0.2, seed=3, labels=labels, groups=groups)
    assert first != dedup.split(keys, 0.2, seed=4, labels=labels, groups=groups)
    for label in ("refund", "shipping"):
        members = [i for i in range(1000) if labels[groups[i] * 2] == label]
        assert abs(sum(first[i] for i in members) / len(members) - 0.2) < 0.01
    assert all(first[2 * g] == first[2 * g + 1] for g in range(500))


def test_curate_counts_every_planted_problem_and_changes_nothing_else(tmp_path: Path) -> None:
    rng = random.Random(9)
    clean = [
        {"instruction": _sentence(rng, 30), "response": _sentence(rng, 8), "label": rng.choice(["a", "b"])}
        for _ in range(200)
    ]
    rows: list[str] = [json.dumps(r) for r in clean]
    planted_pii = [
        {"instruction": f"my details {i}: {text}", "response": "noted, thank you", "label": "a"}
        for i, (text, _, _) in enumerate(PII_CASES)
    ]
    rows += [json.dumps(r) for r in planted_pii]
    rows += [json.dumps({**clean[0], "instruction": clean[0]["instruction"].upper() + "  "})]  # exact (case, space)
    near = clean[1]["instruction"].split()
    near[3] = "changed"
    rows += [json.dumps({**clean[1], "instruction": " ".join(near)})]  # near duplicate
    rows += [
        '{"instruction": "broken',
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": "x", "response": " "}),
    ]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(rows) + "\n")

    home = tmp_path / "home"
    result = run_cli(
        "data",
        "curate",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "--eval-share",
        "0.2",
        "--json",
        env={"TUNELOOP_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dropped"] == {"invalid": 3, "exact_duplicate": 1, "near_duplicate": 1}
    assert report["changed"] == {
        "pii_scrubbed": len(PII_CASES),
        "normalised": 1,
    }  # the upper-cased twin had trailing spaces
    assert report["pii"] == {"email": 1, "card": 2, "iban": 2, "ip": 2, "phone": 2}
    assert report["rows_in"] == len(rows) and report["rows_out"] == 200 + len(PII_CASES)

    out = [
        json.loads(line)
        for name in ("train", "eval")
        for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines()
    ]
    assert sorted(map(json.dumps, [r for r in out if not r["instruction"].startswith("my details")])) == sorted(
        map(json.dumps, clean)
    )
    assert sorted(r["instruction"] for r in out if r["instruction"].startswith("my details")) == sorted(
        f"my details {i}: {expected}" for i, (_, expected, _) in enumerate(PII_CASES)
    )
    eval_rows = (tmp_path / "out" / "eval.jsonl").read_text().splitlines()
    assert abs(len(eval_rows) - 0.2 * report["rows_out"]) <= 2 and report["stratified_by"] == "label"
    train_sets = [
        dedup.shingles(json.loads(r)["instruction"])
        for r in (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    ]
    for row in eval_rows:  # no near duplicate across the split (brute force)
        s = dedup.shingles(json.loads(row)["instruction"])
        assert all(dedup.jaccard(s, t) < 0.8 for t in train_sets)

    # Recorded in MLflow: each split as a dataset input carrying the sha256 of the exact file, the reports as artifacts.
    from mlflow import MlflowClient

    from tuneloop.digest import file_sha256

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    tags = sorted({t.key: t.value for t in i.tags}["sha256"] for i in run.inputs.dataset_inputs)
    assert tags == sorted("sha256:" + file_sha256(tmp_path / "out" / f"{split}.jsonl") for split in ("train", "eval"))
    assert run.data.metrics["dropped/near_duplicate"] == 1 and run.data.metrics["pii/card"] == 2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "report.html", "data"}


def test_language_filter_drops_rows_in_other_languages_and_keeps_rows_too_short_to_tell(tmp_path: Path) -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.cleaning.curate import CurateOptions, curate

    english = [
        ("Where is my order 1234? It was due on Monday.", "Your order left our warehouse and arrives on Friday."),
        ("Cancel my subscription please, the premium plan is too expensive.", "Your premium plan is cancelled."),
    ]
    foreign = [
        (
            "Wo ist meine Bestellung 1234? Sie sollte gestern ankommen.",
            "Ihre Bestellung ist unterwegs und kommt bald an.",
        ),
        ("Où est ma commande ? Elle devait arriver lundi dernier.", "Votre commande est en route et arrive vendredi."),
        ("Мой заказ не пришёл, хотя должен был прийти в понедельник.", "Ваш заказ уже в пути и прибудет в пятницу."),
    ]
    short = [("Hi", "Hello")]
    rows = english + foreign + short
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "response": a}) + "\n" for q, a in rows))

    report = curate(path, tmp_path / "out", CurateOptions(languages=("en",), eval_share=0.0))
    identifier = LanguageIdentifier.from_model_file(
        MODEL_FILE, norm_probs=True
    )  # the reference library, called directly
    expected = {}
    for q, a in rows:
        language, p = identifier.classify(f"{q}\n{a}")
        expected[language if p >= 0.5 else "unsure"] = expected.get(language if p >= 0.5 else "unsure", 0) + 1
    assert report["languages"] == expected and expected["en"] == 2 and expected["unsure"] == 1
    assert report["dropped"] == {"language": 3}
    assert sorted(s["language"] for s in report["samples"]["language"]) == ["de", "fr", "ru"]
    kept = [json.loads(line)["instruction"] for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert kept == [q for q, _ in english + short]

    two = curate(path, tmp_path / "out2", CurateOptions(languages=("en", "de"), eval_share=0.0))
    assert two["dropped"] == {"language": 2}
    with pytest.raises(InvalidInput, match="unknown language code.*xx"):
        curate(path, tmp_path / "out3", CurateOptions(languages=("en", "xx")))


CLI_NEGATED = {"scrub_pii": "no_pii", "near_dedup": "no_near_dedup"}  # on by default, turned off by a flag


def test_every_curate_option_is_a_cli_option_with_the_same_default() -> None:
    import dataclasses

    import click

    from tuneloop.cli.data_cmd import curate_cmd
    from tuneloop.pipelines.data.cleaning.curate import CurateOptions

    context = click.Context(curate_cmd)
    defaults = {p.name: p.get_default(context) for p in curate_cmd.params}
    for field in dataclasses.fields(CurateOptions):
        if field.name in CLI_NEGATED:
            assert field.default is True and defaults[CLI_NEGATED[field.name]] is False
        elif field.name == "languages":
            assert field.default == () and defaults["languages"] == ""
        else:
            assert defaults[field.name] == field.default, field.name


def test_data_curate_passes_every_option_through(tmp_path: Path) -> None:
    import dataclasses

    from tuneloop.pipelines.data.cleaning.curate import CurateOptions

    path = tmp_path / "rows.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}) + "\n" for i in range(6))
    )
    chosen = CurateOptions(
        scrub_pii=False,
        near_dedup=False,
        near_threshold=0.5,
        eval_share=0.3,
        seed=7,
        min_chars=2,
        max_chars=500,
        label_field="intent",
        languages=("en", "de"),
        language_confidence=0.9,
        unreviewed_synthetic="keep",
    )
    assert all(getattr(chosen, f.name) != f.default for f in dataclasses.fields(CurateOptions))
    args = ["--no-pii", "--no-near-dedup", "--near-threshold", "0.5", "--eval-share", "0.3", "--seed", "7"]
    args += ["--min-chars", "2", "--max-chars", "500", "--label-field", "intent", "--languages", "en, DE"]
    args += ["--language-confidence", "0.9", "--unreviewed-synthetic", "keep"]
    proc = run_cli("data", "curate", str(path), "--out", str(tmp_path / "out"), "--no-mlflow", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["options"] == json.loads(json.dumps(dataclasses.asdict(chosen)))
