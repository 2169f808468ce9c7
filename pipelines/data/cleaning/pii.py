"""PII scrubbing: e-mail addresses, phone numbers, payment card numbers (Luhn-checked), IBANs
(mod-97-checked) and IP addresses are replaced by typed placeholders: [EMAIL], [PHONE], [CARD], [IBAN], [IP].

Checksums keep look-alikes: a 16-digit order number that fails Luhn is not a card, an IBAN-shaped
string that fails mod 97 is not an IBAN, `999.1.1.1` is not an IP address. Cards and IBANs are matched
before phone numbers, so their digits are never taken for a phone number; a phone needs a leading `+`
or `(` or separators (a bare 10-digit run is as often an order number), and dates are not phones.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f:]*"
)
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}(?!\w)")


def luhn_valid(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _iban(match: re.Match[str]) -> str | None:
    return "[IBAN]" if iban_valid(match.group()) else None


def _ip(match: re.Match[str]) -> str | None:
    try:
        ipaddress.ip_address(match.group())
    except ValueError:
        return None
    return "[IP]"


DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _phone(match: re.Match[str]) -> str | None:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    if not 8 <= len(digits) <= 15 or DATE.fullmatch(text):
        return None
    # A bare run of digits is an order or account number as often as a phone: a phone shows its shape.
    return "[PHONE]" if text.startswith(("+", "(")) or re.search(r"[ .-]", text) else None


# Order matters: the longest, checksummed kinds first.
RULES: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str | None]]] = [
    ("email", EMAIL, lambda m: "[EMAIL]"),
    ("iban", IBAN, _iban),
    ("card", CARD, _card),
    ("ip", IPV6, _ip),
    ("ip", IPV4, _ip),
    ("phone", PHONE, _phone),
]


def scrub(text: str) -> tuple[str, Counter[str]]:
    """(text with PII replaced, count per kind)."""
    found: Counter[str] = Counter()
    for kind, pattern, replace in RULES:

        def sub(
            match: re.Match[str], kind: str = kind, replace: Callable[[re.Match[str]], str | None] = replace
        ) -> str:
            placeholder = replace(match)
            if placeholder is None:
                return match.group()
            found[kind] += 1
            return placeholder

        text = pattern.sub(sub, text)
    return text, found
