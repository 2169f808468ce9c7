"""Synthetic support-desk traffic: an in-distribution stream and planted contamination.

`tuneloop demo` sends its prompts to the served champion (in-distribution, then drifted: German
tickets and off-topic questions); the drift tests use whole records to measure false alarms and power.
`reviewed_answer` plays the human reviewer who writes the right answer for a drifted prompt: feedback
the challenger may learn from.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INTENTS = {
    "shipping": [
        "Where is my order {n}? It was due on {day}.",
        "Has order {n} shipped yet? I need it by {day}.",
        "Can you change the delivery address of order {n} to {city}?",
    ],
    "refund": [
        "I want a refund for order {n}, the {product} arrived {damage}.",
        "Please refund the {product} from order {n}, it is {damage}.",
    ],
    "account": ["How do I reset my password? I tried {k} times.", "I cannot log in to my account since {day}."],
    "cancel": [
        "Cancel my subscription please, the {product} plan is too {adj}.",
        "Please stop my {product} plan from {day}.",
    ],
}
ANSWERS = {
    "shipping": ["Your order {n} left our warehouse and should arrive by {day}.", "Order {n} is on its way to {city}."],
    "refund": ["I have refunded the {product} from order {n}.", "Your refund for order {n} is approved."],
    "account": ["You can reset your password from the sign-in page.", "I sent a password reset link to your email."],
    "cancel": ["Your {product} plan is cancelled from {day}.", "I have stopped your subscription."],
}
EXTRA = [
    "Thanks for your patience.",
    "Is there anything else I can help with?",
    "Have a nice day.",
    "You will get an email confirmation shortly.",
    "Our team is available around the clock.",
]
SLOTS = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend"],
    "city": ["Berlin", "Lyon", "Leeds", "Porto", "Turin", "Ghent"],
    "product": ["premium", "basic", "family", "kettle", "lamp", "desk"],
    "damage": ["broken", "scratched", "late", "damaged", "wrong"],
    "adj": ["expensive", "slow", "complicated"],
}
OFF_TOPIC = [
    "What will the weather be like in {city} tomorrow?",
    "Who won the football match between {a} and {b}?",
    "Give me a recipe for {dish} with {veg}.",
    "Explain quantum entanglement to a child.",
]
GERMAN = (
    "Wo ist meine Bestellung {n}? Sie sollte gestern ankommen.",
    "Ihre Bestellung {n} ist unterwegs und kommt bald an.",
)
GERMAN_ANSWER = "Ihre Bestellung {n} ist unterwegs und kommt bis {day} an."
OFF_TOPIC_ANSWER = "I can only help with orders, refunds, accounts and subscriptions of our shop."
REFUSAL = "I'm sorry, but I can't help with that request."


def _fill(template: str, rng: random.Random) -> str:
    values = {k: rng.choice(v) for k, v in SLOTS.items()}
    return template.format(
        n=rng.randint(1000, 9999),
        k=rng.randint(2, 9),
        a=rng.choice(["Porto", "Leeds"]),
        b=rng.choice(["Lyon", "Turin"]),
        dish=rng.choice(["soup", "pasta", "curry"]),
        veg=rng.choice(["leeks", "kale", "beans"]),
        **values,
    )


def record(rng: random.Random) -> dict:
    intent = rng.choice(list(INTENTS))
    output = _fill(rng.choice(ANSWERS[intent]), rng)
    output += "".join(" " + e for e in rng.sample(EXTRA, rng.randint(0, 2)))
    prediction = intent if rng.random() < 0.9 else rng.choice([i for i in INTENTS if i != intent])
    return {
        "prompt": _fill(rng.choice(INTENTS[intent]), rng),
        "output": output,
        "prediction": prediction,
        "label": intent,
    }


def contaminate(row: dict, kind: str, rng: random.Random) -> dict:
    row = dict(row)
    if kind == "off_topic":
        row["prompt"] = _fill(rng.choice(OFF_TOPIC), rng)
    elif kind == "longer_outputs":
        row["output"] = " ".join([row["output"], *rng.sample(EXTRA, 5), row["output"]])
    elif kind == "language":
        row["prompt"], row["output"] = (_fill(t, rng) for t in GERMAN)
    elif kind == "refusals":
        row["output"] = REFUSAL
    elif kind == "wrong_predictions":
        row["prediction"] = rng.choice([i for i in INTENTS if i != row["label"]])
    else:
        raise ValueError(kind)
    return row


KINDS = ("off_topic", "longer_outputs", "language", "refusals", "wrong_predictions")


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def windows(
    n_windows: int, size: int, seed: int, kind: str | tuple[str, ...] | None = None, share: float = 0.0
) -> list[dict]:
    """n_windows × size records; with `kind` (or kinds, one drawn per record), `share` of each window's
    records contaminated."""
    rng = random.Random(seed)
    kinds = (kind,) if isinstance(kind, str) else kind or ()
    rows = []
    for _ in range(n_windows):
        planted = set(rng.sample(range(size), round(share * size))) if kinds else set()
        rows += [contaminate(record(rng), _draw(kinds, rng), rng) if i in planted else record(rng) for i in range(size)]
    return rows


def _draw(kinds: tuple[str, ...], rng: random.Random) -> str:
    return kinds[0] if len(kinds) == 1 else rng.choice(kinds)  # one kind draws nothing: seeds keep their rows


def is_off_topic(prompt: str) -> bool:
    return prompt.startswith(tuple(t.split("{")[0] for t in OFF_TOPIC))


def reviewed_answer(row: dict, rng: random.Random) -> str:
    """The answer a support reviewer writes for a record (German prompts get a German answer, off-topic
    questions a polite pointer to what the desk does)."""
    if is_off_topic(row["prompt"]):
        return OFF_TOPIC_ANSWER
    if row["prompt"].startswith("Wo ist"):
        order = "".join(ch for ch in row["prompt"] if ch.isdigit()) or "1000"
        return GERMAN_ANSWER.format(n=order, day=rng.choice(["Montag", "Dienstag", "Freitag"]))
    return _fill(rng.choice(ANSWERS[row.get("label") or "shipping"]), rng)
