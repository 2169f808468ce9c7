"""Data files: formats detected and normalised, every bad row named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput
from tuneloop.pipelines.data import formats as data_io


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_formats_are_detected_and_normalised(tmp_path: Path) -> None:
    chat = _jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ],
    )
    d = data_io.load(chat)
    assert d.format == "chat" and d.digest == "sha256:" + file_sha256(chat)
    assert d.rows == [
        {
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "completion": [{"role": "assistant", "content": "a"}],
        }
    ]
    inst = data_io.load(_jsonl(tmp_path / "i.jsonl", [{"instruction": "do", "input": "x", "output": "y"}]))
    assert inst.format == "instruction" and inst.rows[0]["prompt"][0]["content"] == "do\n\nx"
    comp = data_io.load(_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}]))
    assert comp.format == "completion" and comp.rows == [{"prompt": "a", "completion": "b"}]
    pref = data_io.load(_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    assert pref.format == "preference" and pref.rows[0]["chosen"] == [{"role": "assistant", "content": "b"}]


def test_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "x.csv").write_text("instruction,response\nhi,hello\n,empty\n")
    with pytest.raises(InvalidInput, match=r"x.csv:3: `instruction` is empty"):
        data_io.load(tmp_path / "x.csv")
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}] * 3), tmp_path / "x.parquet")
    assert len(data_io.load(tmp_path / "x.parquet")) == 3


def test_every_bad_row_is_listed(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "a", "chosen": "same", "rejected": "same"},
            "{broken",
            {"prompt": "a", "chosen": "b", "rejected": "c"},
            [1, 2],
            {"prompt": "", "chosen": "b", "rejected": "c"},
        ],
    )
    with pytest.raises(InvalidInput) as err:
        data_io.load(path)
    message = err.value.message
    assert "4 problem(s)" in message
    assert f"{path}:1: `chosen` equals `rejected`" in message
    assert f"{path}:2: not valid JSON" in message
    assert f"{path}:4: a row must be a JSON object" in message
    assert f"{path}:5: " in message


def test_roles_empty_turns_and_length(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "assistant", "content": "y"}]},
        ],
    )
    with pytest.raises(InvalidInput) as err:
        data_io.load(path)
    assert "messages[0].role` must be one of" in err.value.message
    assert "messages[0].content` is empty" in err.value.message
    assert "no user turn before the assistant turn" in err.value.message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="holds no rows"):
        data_io.load(tmp_path / "empty.jsonl")
    with pytest.raises(InvalidInput, match="does not exist"):
        data_io.load(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InvalidInput, match="unsupported extension"):
        data_io.load(tmp_path / "x.txt")


def test_over_long_rows_are_reported(tmp_path: Path, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = _jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "hello", "completion": "world"}, {"prompt": "hello " * 50, "completion": "world"}],
    )
    with pytest.raises(InvalidInput, match=r"p.jsonl:2: \d+ tokens, over `data.max_length` = 16"):
        data_io.load(path, tokenizer=tokenizer, max_length=16)


def test_data_validate_lists_every_planted_problem_with_its_line(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    def chat(*turns: tuple[str, str]) -> str:
        return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})

    lines = [
        chat(("user", "hi"), ("assistant", "hello")),  # 1 fine
        '{"messages": [{"role": "user", "content": "hi"}',  # 2 broken JSON
        "[1, 2]",  # 3 not an object
        chat(("robot", "hi"), ("assistant", "x")),  # 4 wrong role
        chat(("user", "  "), ("assistant", "x")),  # 5 empty turn
        chat(("user", "q"), ("user", "x")),  # 6 no assistant turn
        chat(("user", "q"), ("assistant", "y" * 300)),  # 7 over-long
        chat(("system", "s"), ("user", "q"), ("assistant", "fine too")),  # 8 fine
    ]
    path = tmp_path / "planted.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("data", "validate", str(path), "--max-chars", "200", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [p["line"] for p in report["problems"]] == [2, 3, 4, 5, 6, 7]
    assert (report["rows"], report["valid_rows"], report["valid"], report["format"]) == (8, 2, False, "chat")
    assert sum(report["counts"].values()) == 6 and report["counts"]["`messages[i].content` is empty"] == 1
    text = run_cli("data", "validate", str(path))  # no length limit: row 7 is fine
    assert text.returncode == 1 and f"{path}:7:" not in text.stdout and f"{path}:6: the last turn" in text.stdout
    assert "8 row(s), 3 usable, format chat: 5 problem(s)" in text.stdout

    path.write_text("\n".join([lines[0], lines[7]]) + "\n")
    assert run_cli("data", "validate", str(path)).returncode == 0
    path.write_bytes(b'{"a": "caf\xe9"}\n')  # latin-1, not UTF-8
    broken = run_cli("data", "validate", str(path))
    assert broken.returncode == 1 and "not UTF-8" in broken.stderr
