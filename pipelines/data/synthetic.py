"""`tuneloop data synth`: grow scarce data with rows a registered model writes, each validated and traceable.

Each row takes two generations, simple enough for a small model to follow: a new user question, as the
continuation of a list of a few seed questions drawn at random (the template's `question`, plain text,
no chat template: the first line the model writes is the new item), then the answer,
asked in the seeds' own conversation shape (their system turn, then the question through the template's
`answer`). A candidate is kept only when it passes the checks: a usable row of the seeds' format, within
the length limits, not cut off at the token limit, an answer that does not just repeat the question,
its question neither an exact nor a near duplicate of a real question (the seeds and
any `real` files) or of a question kept before, and — with a scoring model — an answer perplexity at most
`max_perplexity`. Every kept row carries `synthetic`: an id, the generator's NAME:VERSION, the exact
prompts, the seed lines shown, the template's digest; `tuneloop data review` adds a `review` beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput, TuneloopError
from tuneloop.pipelines.data import formats as data_io
from tuneloop.pipelines.data.cleaning.dedup import DuplicateIndex, jaccard, shingles
from tuneloop.pipelines.data.options import SynthOptions

SAMPLES = 3
MIN_QUESTION_WORDS = 3
ECHO_SIMILARITY = 0.5  # an answer sharing this much of its word 3-grams with the question mostly repeats it
DEFAULT_QUESTION = "Messages that users sent:\n{examples}\n-"
DEFAULT_ANSWER = "{question}"


@dataclass(frozen=True)
class Template:
    question: str = DEFAULT_QUESTION  # must contain {examples}
    answer: str = DEFAULT_ANSWER  # must contain {question}

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def load_template(path: Path | None) -> Template:
    """A YAML file with `question` (with {examples}) and optionally `answer` (with {question})."""
    if path is None:
        return Template()
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InvalidInput(
            f"cannot read the template `{path}`: {e}", hint="see examples/synth/support-template.yaml"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("question"), str):
        raise InvalidInput(
            f"template `{path}` needs a `question` text", hint="see examples/synth/support-template.yaml"
        )
    unknown_keys = sorted(set(document) - {"question", "answer"})
    if unknown_keys:
        raise InvalidInput(
            f"template `{path}` has unknown key(s): {', '.join(unknown_keys)}", hint="use `question` and `answer`"
        )
    template = Template(question=document["question"], answer=document.get("answer", DEFAULT_ANSWER))
    for name, text, needed in (("question", template.question, "examples"), ("answer", template.answer, "question")):
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as e:
            raise InvalidInput(f"template `{path}`, `{name}`: {e}", hint="write literal braces as {{ and }}") from None
        if needed not in fields or fields - {needed}:
            raise InvalidInput(
                f"template `{path}`, `{name}` must use the placeholder {{{needed}}} and no other "
                f"(found: {', '.join(sorted(fields)) or 'none'})",
                hint="write literal braces as {{ and }}",
            )
    return template


@dataclass
class Seed:
    line: int
    question: str
    answer: str
    system: str | None


@dataclass
class Candidate:
    question: str
    answer: str
    question_prompt: str
    answer_prompt: str
    seed_lines: list[int]
    perplexity: float | None = None
    truncated: bool = False  # a generation stopped at its token limit, not at the end of its text
    extra: dict[str, Any] = field(default_factory=dict)


def read_seeds(path: Path) -> tuple[str, list[Seed]]:
    """(format, seeds) of a chat, instruction or completion file; every row must be valid."""
    dataset = data_io.load(path)
    if dataset.format == "preference":
        raise InvalidInput(
            f"`{path}` holds preference rows", hint="seed synthesis with chat, instruction or completion rows"
        )
    seeds = []
    for line, row in zip(dataset.lines, dataset.rows, strict=True):
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            seeds.append(Seed(line, prompt, completion, None))
            continue
        system = next((m["content"] for m in prompt if m["role"] == "system"), None)
        seeds.append(Seed(line, prompt[-1]["content"], completion[0]["content"], system))
    return dataset.format, seeds


def real_questions(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        _, seeds = read_seeds(path)
        out += [s.question for s in seeds]
    return out


def first_item(text: str) -> tuple[str, bool]:
    """(the first list item of a continuation, whether it ended) — the model continues a list of messages, so
    its new message ends at the first line break; without one it ran into the token limit or stopped."""
    import re

    text = re.sub(r"^[\s\-*•]+", "", text)
    line, newline, _ = text.partition("\n")
    line = re.sub(r"^(?:new\s+)?(?:message|question|user)\s*:\s*", "", line.strip(), flags=re.IGNORECASE)
    return line.strip().strip('"“”').strip(), bool(newline)


def as_row(fmt: str, question: str, answer: str, system: str | None) -> dict[str, Any]:
    if fmt == "chat":
        turns = [{"role": "system", "content": system}] if system else []
        return {"messages": [*turns, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    if fmt == "instruction":
        return {"instruction": question, "response": answer}
    return {"prompt": question, "completion": answer}


class Screen:
    """The checks a candidate passes before it is kept; `verdict` is None (keep) or the reason to drop it."""

    def __init__(self, fmt: str, real: list[str], options: SynthOptions) -> None:
        self.fmt, self.options = fmt, options
        self.real = DuplicateIndex(options.near_threshold, seed=options.seed)
        self.real.add_many(real)
        self.kept = DuplicateIndex(options.near_threshold, seed=options.seed)

    def verdict(self, c: Candidate) -> str | None:
        if data_io.row_problem(as_row(self.fmt, c.question, c.answer, None), self.fmt):
            return "invalid"
        if c.truncated and not self.options.keep_truncated:
            return "truncated"
        length = len(c.question) + len(c.answer)
        if length < self.options.min_chars or len(c.question.split()) < MIN_QUESTION_WORDS:
            return "too_short"
        if length > self.options.max_chars:
            return "too_long"
        if jaccard(shingles(c.question), shingles(c.answer)) >= ECHO_SIMILARITY:
            return "echoes_question"
        if self.real.match(c.question):
            return "copies_real"
        if self.kept.match(c.question):
            return "duplicate"
        if (
            self.options.max_perplexity is not None
            and c.perplexity is not None
            and c.perplexity > self.options.max_perplexity
        ):
            return "high_perplexity"
        return None

    def keep(self, c: Candidate) -> None:
        self.kept.add(c.question)


def synthesize(
    rc: Any,
    generator: str,
    seeds_path: Path,
    out: Path,
    options: SynthOptions,
    *,
    template: Template | None = None,
    real: list[Path] | None = None,
    scorer: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate until `options.count` rows pass the checks (or the attempts run out); write them to `out`
    with `out`.report.json beside it. The report counts every candidate by outcome and adds up."""
    import torch
    from tqdm.auto import tqdm

    from tuneloop.digest import file_sha256
    from tuneloop.pipelines.evaluation.runner import load_model
    from tuneloop.registry.catalog import resolve

    template = template or Template()
    fmt, seeds = read_seeds(seeds_path)  # an empty or broken seed file fails here, every bad row named
    real_files = list(real or [])
    screen = Screen(fmt, [s.question for s in seeds] + real_questions(real_files), options)
    version = resolve(rc, generator)
    generator_id = f"{version.name}:{version.version}"
    scorer_version = resolve(rc, scorer) if scorer else None  # a bad reference fails before any model loads
    model, tokenizer = load_model(rc, version)
    scoring = None
    if scorer_version is not None:
        same = (scorer_version.name, scorer_version.version) == (version.name, version.version)
        scoring = (model, tokenizer) if same else load_model(rc, scorer_version)

    torch.manual_seed(options.seed)  # sampling draws from torch's generator: the same seed writes the same rows
    rng = random.Random(options.seed)
    system = Counter(s.system for s in seeds).most_common(1)[0][0]
    seeds = _distinct(seeds)  # a prompt showing the same question twice wastes its examples
    attempts = options.max_attempts or 4 * options.count
    report: dict[str, Any] = {
        "input": str(seeds_path),
        "input_sha256": "sha256:" + file_sha256(seeds_path),
        "format": fmt,
        "generator": generator_id,
        "scorer": f"{scorer_version.name}:{scorer_version.version}" if scorer_version else None,
        "template_digest": template.digest,
        "real_files": [str(p) for p in real_files],
        "rows_in": 0,
        "dropped": Counter(),
        "changed": {},
        "pii": {},
        "samples": {},
    }
    kept_rows: list[dict[str, Any]] = []
    with tqdm(total=options.count, desc=f"synthesizing with {generator_id}", unit="row", disable=not progress) as bar:
        while len(kept_rows) < options.count and report["rows_in"] < attempts:
            n = min(options.batch_size, attempts - report["rows_in"])
            batch = _generate(model, tokenizer, seeds, system, template, options, rng, n)
            if scoring is not None:
                _score(*scoring, batch)
            report["rows_in"] += len(batch)
            for c in batch:
                reason = screen.verdict(c)
                if reason is not None:
                    report["dropped"][reason] += 1
                    if len(report["samples"].setdefault(reason, [])) < SAMPLES:
                        report["samples"][reason].append({"question": c.question[:300], "answer": c.answer[:300]})
                    continue
                if len(kept_rows) == options.count:
                    report["dropped"]["surplus"] += 1
                    continue
                screen.keep(c)
                kept_rows.append(_with_lineage(fmt, c, system, generator_id, template, report["scorer"]))
                bar.update(1)
            bar.set_postfix(generated=report["rows_in"])
    _write_atomically(out, kept_rows)
    report_path = out.with_name(out.name + ".report.json")
    report.update(
        {
            "rows_out": len(kept_rows),
            "dropped": dict(report["dropped"]),
            "options": asdict(options),
            "outputs": {"synthetic": str(out)},
            "output_sha256": {"synthetic": "sha256:" + file_sha256(out)},
            "report": str(report_path),
        }
    )
    if report["rows_in"] != report["rows_out"] + sum(report["dropped"].values()):
        raise TuneloopError(
            f"synthesis lost track of candidates: {report['rows_in']} generated, {report['rows_out']} kept, "
            f"{report['dropped']} dropped",
            hint="report this as a bug",
        )
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def _distinct(seeds: list[Seed]) -> list[Seed]:
    from tuneloop.pipelines.data.cleaning.dedup import comparable

    seen: set[str] = set()
    out = []
    for s in seeds:
        if comparable(s.question) not in seen:
            seen.add(comparable(s.question))
            out.append(s)
    return out


def _generate(
    model: Any,
    tokenizer: Any,
    seeds: list[Seed],
    system: str | None,
    template: Template,
    options: SynthOptions,
    rng: random.Random,
    n: int,
) -> list[Candidate]:
    from tuneloop.pipelines.evaluation.generation import generate, render_prompt

    def write(prompts: list[str], tokens: int, temperature: float) -> list[Any]:
        return generate(
            model, tokenizer, prompts, max_new_tokens=tokens, temperature=temperature, batch_size=options.batch_size
        )

    shown = [rng.sample(seeds, min(options.examples_per_prompt, len(seeds))) for _ in range(n)]
    question_prompts = [
        template.question.format(examples="\n".join("- " + " ".join(s.question.split()) for s in group))
        for group in shown
    ]
    asked = write(
        question_prompts, options.question_tokens, options.temperature
    )  # plain continuation, no chat template
    items = [first_item(g.text) for g in asked]
    questions = [q for q, _ in items]
    answer_prompts = [template.answer.format(question=q) for q in questions]
    turns = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
        for p in answer_prompts
    ]
    rendered_answers = [render_prompt(tokenizer, t) for t in turns]
    answers = write(rendered_answers, options.answer_tokens, options.answer_temperature)
    return [
        Candidate(
            question=q,
            answer=a.text,
            question_prompt=p,
            answer_prompt=ap,
            seed_lines=[s.line for s in group],
            truncated=not (ended or g.output_tokens < options.question_tokens)
            or a.output_tokens >= options.answer_tokens,
            extra={"rendered_answer_prompt": ra},
        )
        for q, (_, ended), g, a, p, ap, group, ra in zip(
            questions, items, asked, answers, question_prompts, answer_prompts, shown, rendered_answers, strict=True
        )
    ]


def _score(model: Any, tokenizer: Any, batch: list[Candidate]) -> None:
    """Perplexity of each answer given its question, under the scoring model (NaN-free: empty answers score inf)."""
    from tuneloop.monitors.metrics import perplexity as ppl

    scored = [c for c in batch if c.answer.strip()]
    if not scored:
        return
    sequences = ppl.encode(
        tokenizer, [c.answer for c in scored], prompts=[c.extra["rendered_answer_prompt"] for c in scored]
    )
    result = ppl.perplexity(model, sequences, pad_token_id=tokenizer.pad_token_id or 0)
    for c, nll, tokens in zip(scored, result.nll, result.tokens, strict=True):
        c.perplexity = math.exp(nll / tokens) if tokens else math.inf


def _with_lineage(
    fmt: str, c: Candidate, system: str | None, generator: str, template: Template, scorer: str | None
) -> dict[str, Any]:
    row = as_row(fmt, c.question, c.answer, system)
    identity = json.dumps([generator, c.question_prompt, c.question, c.answer], ensure_ascii=False)
    row["synthetic"] = {
        "id": "syn-" + hashlib.sha256(identity.encode()).hexdigest()[:16],
        "generator": generator,
        "question_prompt": c.question_prompt,
        "answer_prompt": c.answer_prompt,
        "seed_lines": c.seed_lines,
        "template": template.digest,
        **({"perplexity": round(c.perplexity, 4), "scorer": scorer} if c.perplexity is not None else {}),
    }
    return row


def _write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
