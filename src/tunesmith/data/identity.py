"""Self-cognition ("who am I") data: varied questions and answers about the assistant.

The templates live in data/assets/identity.json, grouped by category (who, maker,
purpose, other, greeting) and language (en, zh); each question gets an answer
of its own category. Placeholders: {{name}}, {{author}}, {{other}} (another
assistant's name, so the model learns to say it is not ChatGPT, SmolLM, ...).
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text

ASSETS = Path(__file__).parent / "assets" / "identity.json"
LANGUAGES = ("zh", "en")
PLACEHOLDER = re.compile(r"\{\{\s*\w*\s*\}\}")


@cache
def _templates() -> dict:
    return json.loads(ASSETS.read_text(encoding="utf-8"))


def identity_questions(lang: str) -> list[str]:
    """Every question template of `lang` (with placeholders), for checks against eval sets."""
    return [q for group in _templates()[lang].values() for q in group["questions"]]


def check_text(key: str, value: str) -> str:
    if not value or not value.strip():
        raise UserError(f"--{key} is empty; give the assistant's {key}")
    if "{{" in value or "}}" in value:
        raise UserError(f"--{key} {value!r} contains '{{{{' or '}}}}'; use plain text")
    return value.strip()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = PLACEHOLDER.search(text)
    if left:
        raise UserError(f"identity template {text!r}: placeholder {left.group(0)} was not filled")
    return text


def generate_identity(
    name: str,
    author: str,
    langs: tuple[str, ...] | list[str] = LANGUAGES,
    repeat: int = 1,
    system: str | None = None,
    seed: int = 0,
    others_per_question: int = 3,
) -> list[dict]:
    """Identity records in XTuner's conversation format.

    Every question template appears `repeat` times per language, the "are you
    {{other}}?" ones with `others_per_question` other assistants' names from `others`,
    each time with an answer drawn from its category. Deterministic for a given seed.
    """
    name, author = check_text("name", name), check_text("author", author)
    if repeat < 1:
        raise UserError("--repeat must be at least 1")
    templates = _templates()
    unknown = [lang for lang in langs if lang not in LANGUAGES]
    if unknown or not langs:
        raise UserError(f"--lang {','.join(langs)}: use a comma-separated subset of zh,en")
    others = [o for o in templates["others"] if o.lower() not in (name.lower(), author.lower())]
    rng = random.Random(seed)
    # each "are you {{other}}?" question takes the next names in turn, so every name is asked
    turn_of_others = 0
    records = []
    for lang in langs:
        for _ in range(repeat):
            for group in templates[lang].values():
                for question in group["questions"]:
                    fills = [None]
                    if "{{other}}" in question and others:
                        k = min(others_per_question, len(others))
                        fills = [others[(turn_of_others + j) % len(others)] for j in range(k)]
                        turn_of_others += k
                    for other in fills:
                        values = {"name": name, "author": author}
                        if other:
                            values["other"] = other
                        answer = rng.choice(group["answers"])
                        turn = {"input": _fill(question, values), "output": _fill(answer, values)}
                        if system:
                            turn = {"system": system, **turn}
                        records.append({"conversation": [turn]})
    rng.shuffle(records)
    return records


def write_jsonl(records: list[dict], path: str | Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
