"""Data files: formats detected and normalised, every bad row named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import data as data_io
from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_formats_are_detected_and_normalised(tmp_path: Path) -> None:
    chat = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": "a"}]}])
    d = data_io.load(chat)
    assert d.format == "chat" and d.digest == "sha256:" + file_sha256(chat)
    assert d.rows == [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                       "completion": [{"role": "assistant", "content": "a"}]}]
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
    path = _jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        "{broken",
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        [1, 2],
        {"prompt": "", "chosen": "b", "rejected": "c"},
    ])
    with pytest.raises(InvalidInput) as err:
        data_io.load(path)
    message = err.value.message
    assert "4 problem(s)" in message
    assert f"{path}:1: `chosen` equals `rejected`" in message
    assert f"{path}:2: not valid JSON" in message
    assert f"{path}:4: a row must be a JSON object" in message
    assert f"{path}:5: " in message


def test_roles_empty_turns_and_length(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "assistant", "content": "y"}]},
    ])
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
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "hello", "completion": "world"},
                                         {"prompt": "hello " * 50, "completion": "world"}])
    with pytest.raises(InvalidInput, match=r"p.jsonl:2: \d+ tokens, over `data.max_length` = 16"):
        data_io.load(path, tokenizer=tokenizer, max_length=16)
