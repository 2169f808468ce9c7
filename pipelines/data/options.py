"""What `data curate` and `data synth` can be asked to do: one options class each, whose fields are
also their command-line options (light to import: the CLI reads them to declare its options)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.optionspec import option


@dataclass
class CurateOptions:
    eval_share: float = option(0.1, "Share of rows for eval (0: no split).", minimum=0.0, maximum=0.9)
    near_threshold: float = option(
        0.8, "Jaccard similarity (word 3-grams) at which rows count as near duplicates.", minimum=0.1, maximum=1.0
    )
    near_dedup: bool = option(True, "Drop exact duplicates only.", off_flag="--no-near-dedup")
    scrub_pii: bool = option(True, "Keep e-mails, phones, cards, IBANs and IPs as they are.", off_flag="--no-pii")
    min_chars: int = option(1, "Drop rows with less text.", minimum=0)
    max_chars: int | None = option(None, "Drop rows with more text.", minimum=1)
    languages: tuple[str, ...] = option(
        (),
        "Keep only rows in these languages (comma-separated ISO 639-1 codes, e.g. en,de); rows too short to tell "
        "are kept.",
        comma_list=True,
    )
    language_confidence: float = option(
        0.5,
        "How sure the language identifier must be before a row is dropped for its language.",
        minimum=0.0,
        maximum=1.0,
    )
    unreviewed_synthetic: str = option(
        "hold",
        "Synthetic rows nobody reviewed (`tuneloop data review`): drop them (counted) or keep them.",
        choices=("hold", "keep"),
    )
    label_field: str = option("label", "Field the split is stratified by, where rows have it.")
    seed: int = option(0, "Seed of the split.")


@dataclass
class SynthOptions:
    count: int = option(20, "Rows to keep.", minimum=1)
    max_attempts: int | None = option(None, "Generations before giving up.", minimum=1, default_text="4 × count")
    examples_per_prompt: int = option(3, "Seed questions shown per prompt.", minimum=1)
    near_threshold: float = option(
        0.8, "Jaccard similarity (word 3-grams) at which a question copies another.", minimum=0.1, maximum=1.0
    )
    min_chars: int = option(8, "Drop rows with less text.", minimum=0)
    max_chars: int = option(2000, "Drop rows with more text.", minimum=1)
    max_perplexity: float | None = option(None, "With --score-with: drop answers above this.", minimum=1.0)
    temperature: float = option(0.9, "Sampling temperature of questions (their diversity).", minimum=0.0)
    answer_temperature: float = option(0.0, "Answers: greedy, the model's best answer.", on_cli=False)
    question_tokens: int = option(48, "Questions cut at this limit are dropped.", minimum=1)
    answer_tokens: int = option(160, "Answers cut at this limit are dropped.", minimum=1)
    keep_truncated: bool = option(False, "Keep rows whose question or answer stopped at its token limit.")
    batch_size: int = option(8, "Prompts generated together.", on_cli=False)
    seed: int = option(0, "Seed of the sampling and of the seed examples shown.")
