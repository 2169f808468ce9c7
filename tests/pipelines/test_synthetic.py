"""Synthetic data: the checks a generated row must pass (planted failures, each counted once), generation
with lineage on a tiny registered model, and the human review round trip (accept, reject, edit, hold back)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

SYSTEM = "You are a support agent."
SEED_QUESTIONS = [
    "Where is my order 1234? It was due on Monday.",
    "How do I reset my password after three tries?",
    "Please cancel the premium plan from Friday on.",
    "My kettle arrived broken, I want a refund.",
]


def _seeds(path: Path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"Answer {i}: done."},
            ]
        }
        for i, q in enumerate(SEED_QUESTIONS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_each_planted_failure_is_dropped_for_its_reason_and_good_rows_pass() -> None:
    from tuneloop.pipelines.data.synthetic import Candidate, Screen, SynthOptions

    def c(question: str, answer: str = "Your parcel left the warehouse and will arrive on Tuesday.", **kw) -> Candidate:
        return Candidate(
            question=question, answer=answer, question_prompt="p", answer_prompt=question, seed_lines=[1], **kw
        )

    good = [
        c("Can I pay for the family plan with a gift card from the shop?"),
        c("Why was my lamp delivered to Ghent instead of Leeds last week?"),
        c("How long does a refund to a credit card usually take here?", perplexity=12.0),
    ]
    planted = {
        "invalid": c("Is the desk in stock again this month?", answer="   "),
        "truncated": c("Could you tell me when the premium plan renews each year?", truncated=True),
        "too_short": c("Refund?"),
        "too_long": c("Please explain the whole returns policy to me " + "in detail " * 30),
        "echoes_question": c(
            "I want to change the address of order 5555 to Porto please.",
            answer="You want to change the address of order 5555 to Porto please.",
        ),
        "copies_real": c("where is my order 1234?   It was due on MONDAY."),  # exact, after case and spaces
        "high_perplexity": c("Do you ship kettles to Porto and Turin on weekends?", perplexity=80.0),
    }
    near_real = c("How do I reset my password after three tries, please?")  # a near copy of a seed question
    twin = c("Can I pay for the family plan with a gift card from the shop??")  # a near copy of a kept row

    screen = Screen("chat", SEED_QUESTIONS, SynthOptions(max_chars=300, max_perplexity=50.0))
    verdicts = {}
    for candidate in [*good, *planted.values(), near_real, twin]:
        verdict = screen.verdict(candidate)
        verdicts[candidate.question] = verdict
        if verdict is None:
            screen.keep(candidate)
    assert [verdicts[g.question] for g in good] == [None, None, None]
    assert {reason: verdicts[p.question] for reason, p in planted.items()} == {reason: reason for reason in planted}
    assert verdicts[near_real.question] == "copies_real" and verdicts[twin.question] == "duplicate"
    assert len(screen.kept) == len(good)  # nothing else was kept


def test_a_generated_question_is_the_first_item_the_model_writes() -> None:
    from tuneloop.pipelines.data.synthetic import first_item

    assert first_item(" Where is my parcel?\n- Another one\n- ") == ("Where is my parcel?", True)
    assert first_item('- Message: "Can I pay later?"\n') == ("Can I pay later?", True)
    assert first_item(" A message that ran on and on") == ("A message that ran on and on", False)


def test_templates_are_checked_for_their_placeholders(tmp_path: Path) -> None:
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.synthetic import load_template

    shipped = load_template(REPO / "examples" / "synth" / "support-template.yaml")
    assert "{examples}" in shipped.question and shipped.question.endswith("-")
    bad = {
        "no_examples": "question: Write a question.\n",
        "stray": "question: '{examples} {topic}'\n",
        "answer": "question: '{examples}'\nanswer: 'no placeholder'\n",
        "key": "question: '{examples}'\nextra: 1\n",
    }
    for name, text in bad.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        with pytest.raises(InvalidInput):
            load_template(tmp_path / f"{name}.yaml")


def test_synth_on_a_tiny_model_writes_valid_rows_with_lineage_and_an_exact_report(
    sqlite_rc, tiny_model: Path, tmp_path: Path
) -> None:
    from tuneloop.digest import file_sha256
    from tuneloop.pipelines.data.cleaning.curate import log_to_mlflow
    from tuneloop.pipelines.data.formats import check
    from tuneloop.pipelines.data.synthetic import SynthOptions, synthesize
    from tuneloop.registry.base_models import import_base

    import_base(sqlite_rc, "tiny", str(tiny_model))
    seeds = _seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "synthetic.jsonl"
    options = SynthOptions(
        count=3,
        max_attempts=12,
        question_tokens=6,
        answer_tokens=6,
        min_chars=1,
        keep_truncated=True,
        batch_size=4,
        seed=5,
    )
    report = synthesize(sqlite_rc, "tiny:1", seeds, out, options, scorer="tiny:1", progress=False)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report["rows_out"] == 3
    assert report["rows_in"] == report["rows_out"] + sum(report["dropped"].values())
    scan = check(out)
    assert scan.format == "chat" and not scan.problems and scan.total == 3
    seed_lines = set(range(1, len(SEED_QUESTIONS) + 1))
    for row in rows:
        lineage = row["synthetic"]
        assert lineage["generator"] == "tiny:1" and lineage["scorer"] == "tiny:1" and lineage["perplexity"] > 0
        assert row["messages"][0] == {"role": "system", "content": SYSTEM}  # the seeds' conversation shape
        assert row["messages"][1]["content"] == lineage["answer_prompt"]  # default answer template: the question itself
        shown = [SEED_QUESTIONS[n - 1] for n in lineage["seed_lines"]]
        assert set(lineage["seed_lines"]) <= seed_lines and all(f"- {q}" in lineage["question_prompt"] for q in shown)
    assert len({r["synthetic"]["id"] for r in rows}) == 3
    again = synthesize(sqlite_rc, "tiny:1", seeds, tmp_path / "again.jsonl", options, scorer="tiny:1", progress=False)
    assert (tmp_path / "again.jsonl").read_text() == out.read_text() and again["rows_in"] == report["rows_in"]  # seeded

    run_id = log_to_mlflow(
        sqlite_rc, report, [Path(report["report"])], run_name="synth", tags={"tuneloop.data.generator": "tiny:1"}
    )
    run = sqlite_rc.mlflow.get_run(run_id)
    assert run.data.tags["tuneloop.data.generator"] == "tiny:1"
    assert [{t.key: t.value for t in i.tags}["sha256"] for i in run.inputs.dataset_inputs] == [
        "sha256:" + file_sha256(out)
    ]


def _synthetic_file(path: Path) -> tuple[Path, list[dict]]:
    real = [{"instruction": f"Real question {i} about order {i}?", "response": f"Real answer {i}."} for i in range(2)]
    synthetic = [
        {
            "instruction": f"Synthetic question {i} about a refund?",
            "response": f"Synthetic answer {i}.",
            "synthetic": {"id": f"syn-{i}", "generator": "g:1", "question_prompt": "p"},
        }
        for i in range(5)
    ]
    rows = real + synthetic
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _fill(sheet: Path, decisions: dict[str, dict[str, str]]) -> None:
    with open(sheet, newline="", encoding="utf-8") as f:
        entries = list(csv.DictReader(f))
    for e in entries:
        e.update(decisions.get(e["id"], {}))
    with open(sheet, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(entries[0]))
        writer.writeheader()
        writer.writerows(entries)


def test_review_round_trip_applies_every_decision_and_holds_back_unreviewed_rows(tmp_path: Path) -> None:
    data, rows = _synthetic_file(tmp_path / "data.jsonl")
    sheet = tmp_path / "review.csv"
    exported = run_cli("data", "review", "export", str(data), "--out", str(sheet), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["exported"] == 5  # the synthetic rows nobody reviewed, not the real ones
    with open(sheet, newline="", encoding="utf-8") as f:
        entries = list(csv.DictReader(f))
    assert [e["id"] for e in entries] == [f"syn-{i}" for i in range(5)]
    assert entries[0]["prompt"] == rows[2]["instruction"] and entries[0]["answer"] == rows[2]["response"]

    _fill(
        sheet,
        {
            "syn-0": {"decision": "accept"},
            "syn-1": {"decision": "Reject", "note": "off topic"},
            "syn-2": {"decision": "edit", "edited_answer": "A better answer."},
        },
    )
    out = tmp_path / "reviewed.jsonl"
    imported = run_cli(
        "data", "review", "import", str(data), str(sheet), "--out", str(out), "--reviewer", "ana", "--json"
    )
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert (result["accepted"], result["edited"], result["rejected"], result["held_back"]) == (1, 1, 1, 2)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in kept] == [
        rows[0]["instruction"],
        rows[1]["instruction"],
        rows[2]["instruction"],
        rows[4]["instruction"],
    ]
    assert kept[0] == rows[0] and kept[1] == rows[1]  # real rows untouched
    assert kept[2]["review"]["decision"] == "accepted" and kept[2]["review"]["reviewer"] == "ana"
    assert kept[3]["response"] == "A better answer." and kept[3]["review"]["original"]["answer"] == rows[4]["response"]
    assert kept[3]["synthetic"] == rows[4]["synthetic"]  # lineage survives the edit
    held = [json.loads(line) for line in (tmp_path / "reviewed.held.jsonl").read_text().splitlines()]
    assert held == [rows[5], rows[6]]

    # Policy keep: the unreviewed rows stay, marked as unreviewed by the absence of `review`.
    from tuneloop.pipelines.data.review import apply, export

    kept_all = apply(data, sheet, tmp_path / "all.jsonl", unreviewed="keep")
    assert kept_all["rows_out"] == 6 and kept_all["unreviewed_kept"] == 2
    # Reviewing again: only the still-unreviewed rows are exported.
    assert export(tmp_path / "all.jsonl", tmp_path / "again.jsonl")["exported"] == 2


def test_a_bad_review_sheet_is_refused_with_its_lines_and_nothing_is_written(tmp_path: Path) -> None:
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.review import apply, export

    data, _ = _synthetic_file(tmp_path / "data.jsonl")
    sheet = tmp_path / "review.csv"
    export(data, sheet)
    _fill(sheet, {"syn-0": {"decision": "maybe"}, "syn-1": {"decision": "edit"}})
    out = tmp_path / "out.jsonl"
    with pytest.raises(InvalidInput) as refused:
        apply(data, sheet, out)
    assert "line 2: decision `maybe`" in str(refused.value) and "line 3: decision `edit` needs" in str(refused.value)
    assert not out.exists()

    _fill(sheet, {"syn-0": {"decision": "accept", "id": "syn-404"}, "syn-1": {"decision": ""}})
    out.write_text("previous\n")
    with pytest.raises(InvalidInput, match="syn-404"):
        apply(data, sheet, out)
    assert out.read_text() == "previous\n"
    proc = run_cli("data", "review", "import", str(data), str(sheet), "--out", str(out))
    assert proc.returncode == 1 and "not rows of" in proc.stderr


def test_curate_holds_back_unreviewed_synthetic_rows_by_policy(tmp_path: Path) -> None:
    from tuneloop.pipelines.data.cleaning.curate import CurateOptions, curate

    data, rows = _synthetic_file(tmp_path / "data.jsonl")
    rows[3]["review"] = {"decision": "accepted"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = curate(data, tmp_path / "held", CurateOptions(eval_share=0.0, near_dedup=False))
    assert held["dropped"] == {"unreviewed_synthetic": 4} and held["rows_out"] == 3
    kept = curate(data, tmp_path / "kept", CurateOptions(eval_share=0.0, near_dedup=False, unreviewed_synthetic="keep"))
    assert kept["dropped"] == {} and kept["rows_out"] == 7


def test_synth_refuses_bad_requests_before_loading_a_model(tmp_path: Path) -> None:
    seeds = _seeds(tmp_path / "seeds.jsonl")
    env = {"TUNELOOP_HOME": str(tmp_path / "home")}
    no_scorer = run_cli(
        "data",
        "synth",
        str(seeds),
        "--model",
        "m:1",
        "--out",
        str(tmp_path / "o.jsonl"),
        "--max-perplexity",
        "20",
        env=env,
    )
    assert no_scorer.returncode == 1 and "--score-with" in no_scorer.stderr
    unknown = run_cli("data", "synth", str(seeds), "--model", "nobody:1", "--out", str(tmp_path / "o.jsonl"), env=env)
    assert unknown.returncode != 0 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr
    preference = tmp_path / "pref.jsonl"
    preference.write_text(json.dumps({"prompt": "Which?", "chosen": "This one.", "rejected": "That one."}) + "\n")
    refused = run_cli(
        "data", "synth", str(preference), "--model", "nobody:1", "--out", str(tmp_path / "o.jsonl"), env=env
    )
    assert refused.returncode == 1 and "preference rows" in refused.stderr
    assert not (tmp_path / "o.jsonl").exists()
