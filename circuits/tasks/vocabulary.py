"""Every word the built-in tasks can emit, for the bundled models' word-level tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from circuits.tasks import data
from circuits.tasks.templates import TemplateSpec, parse_template
from circuits.tasks.tokenization import split_words


def spec_words(spec: TemplateSpec) -> list[str]:
    """Words a template spec can emit: template text, slot values, candidates and literal corruptions."""
    words: list[str] = []
    for template in spec.templates:
        for part in parse_template(template):
            if isinstance(part, str):
                words += split_words(part)
    for slot in spec.slots.values():
        for value in slot.values or []:
            words += split_words(value)
    for value in spec.candidates or []:
        words += split_words(value)
    for rules in spec.corruptions.values():
        for rule in rules.values():
            if rule.kind == "literal":
                words += split_words(rule.text)
    return words


def task_vocabulary(task_files: Iterable[str | Path] = ()) -> list[str]:
    """Words (as the word-level tokenizer splits them) of IOI and greater-than, in a fixed order.

    Template words and punctuation first, then names, places, objects, greater-than nouns, and the 100
    two-digit tokens "00".."99" (years split into century and two digits). Deterministic, no duplicates.
    ``task_files``: TOML template task files whose words are appended (after the built-in ones, so the
    built-in ids never move).
    """
    words: list[str] = []
    for template in data.IOI_TEMPLATES + [data.GREATER_THAN_TEMPLATE]:
        for part in parse_template(template):
            if isinstance(part, str):
                words += split_words(part)
    words += data.IOI_NAMES + data.IOI_PLACES + data.IOI_OBJECTS + data.GREATER_THAN_NOUNS + data.TWO_DIGITS
    if task_files:
        from circuits.tasks.files import read_toml, spec_from_toml

        for path in task_files:
            content, lines = read_toml(Path(path))
            if "templates" in content or "template" in content:
                words += spec_words(spec_from_toml(content, Path(path), lines))
    return list(dict.fromkeys(words))
