"""Identity eval: does the model answer held-out "who are you" questions as its new self?

Each answer is scored on three things: it states the new name (where the question
asks for it), it states the new author (where the question asks about the maker),
and it does not claim the old identity ("SmolLM", "Hugging Face"). A mention of an
old name right after a negation ("I am not SmolLM", "不是SmolLM") is not a claim.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tunesmith.errors import UserError, where

ASKS = ("name", "author", "both")
# Words that, just before an old name, turn a mention into a denial.
_NEGATION_EN = re.compile(r"\b(not|never|nor|no longer|rather than|instead of|unlike)\b|n't", re.I)
_NEGATION_ZH = re.compile(r"(不是|并非|而非|并不是|不)")


@dataclass(frozen=True)
class IdentityQuestion:
    lang: str
    question: str
    asks: str  # name | author | both


def default_questions_path() -> Path:
    return Path(str(resources.files("tunesmith.eval") / "assets" / "identity_questions.json"))


def read_json(path: Path, what: str):
    """A JSON eval file; a missing or malformed one is a UserError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such {what} file") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{where(path, err.lineno)}: not valid JSON ({err.msg})") from err


def load_questions(path: str | Path | None = None) -> list[IdentityQuestion]:
    """The shipped held-out questions, or a JSON file of the same shape
    (`{"questions": [{"lang", "question", "asks"}]}` or a bare list)."""
    path = Path(path) if path else default_questions_path()
    doc = read_json(path, "questions")
    items = doc.get("questions") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: expected a non-empty list under 'questions'")
    questions = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not str(item.get("question", "")).strip():
            raise UserError(f"{path}: questions[{i}] needs a non-empty 'question'")
        asks = item.get("asks", "name")
        if asks not in ASKS:
            raise UserError(
                f"{path}: questions[{i}].asks is '{asks}'; use one of {', '.join(ASKS)}"
            )
        questions.append(IdentityQuestion(str(item.get("lang", "en")), item["question"], asks))
    return questions


def _pattern(phrase: str) -> re.Pattern:
    """Case-insensitive, whitespace-tolerant, whole-word at ASCII-alphanumeric edges."""
    parts = [re.escape(p) for p in phrase.split()]
    body = r"\s*".join(parts)
    start = r"(?<![0-9a-z])" if re.match(r"[0-9a-z]", phrase.strip(), re.I) else ""
    end = r"(?![0-9a-z])" if re.search(r"[0-9a-z]$", phrase.strip(), re.I) else ""
    return re.compile(start + body + end, re.I)


def mentions(text: str, phrase: str) -> bool:
    """Whether `text` contains `phrase` (case- and spacing-insensitive, as a whole word)."""
    return bool(phrase.strip()) and _pattern(phrase).search(text) is not None


def claimed_old(answer: str, old_names: list[str] | tuple[str, ...]) -> list[str]:
    """The old names the answer uses for itself: mentioned without a negation just before."""
    claimed = []
    for old in old_names:
        for match in _pattern(old).finditer(answer):
            before = answer[: match.start()]
            words = " ".join(before.split()[-4:])
            if not (_NEGATION_EN.search(words) or _NEGATION_ZH.search(before[-4:])):
                claimed.append(old)
                break
    return claimed


def score_answer(
    question: IdentityQuestion, answer: str, name: str, author: str, old_names=()
) -> dict:
    """Scores of one answer; `hit` = everything the question asks is stated and nothing old is claimed."""
    name_ok = mentions(answer, name)
    author_ok = mentions(answer, author)
    old = claimed_old(answer, old_names)
    need_name = question.asks in ("name", "both")
    need_author = question.asks in ("author", "both")
    hit = (name_ok or not need_name) and (author_ok or not need_author) and not old
    return {
        **asdict(question),
        "answer": answer,
        "name_ok": name_ok,
        "author_ok": author_ok,
        "old_claimed": old,
        "hit": hit,
    }


def _rate(rows: list[dict], key: str = "hit") -> float:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else 0.0


def summarize(scored: list[dict], name: str, author: str, old_names=()) -> dict:
    """The identity report: hit rate overall and per language, old-identity claims, every answer."""
    by_lang = {}
    for lang in sorted({r["lang"] for r in scored}):
        rows = [r for r in scored if r["lang"] == lang]
        by_lang[lang] = {
            "questions": len(rows),
            "hits": sum(r["hit"] for r in rows),
            "hit_rate": _rate(rows),
        }
    asked_name = [r for r in scored if r["asks"] in ("name", "both")]
    asked_author = [r for r in scored if r["asks"] in ("author", "both")]
    return {
        "name": name,
        "author": author,
        "old_names": list(old_names),
        "questions": len(scored),
        "hits": sum(r["hit"] for r in scored),
        "hit_rate": _rate(scored),
        "by_lang": by_lang,
        "name_rate": _rate(asked_name, "name_ok"),
        "author_rate": _rate(asked_author, "author_ok"),
        "old_claims": sum(bool(r["old_claimed"]) for r in scored),
        "answers": scored,
    }


def evaluate_identity(
    lm,
    name: str,
    author: str,
    questions: list[IdentityQuestion] | None = None,
    old_names=(),
    system: str | None = None,
    max_new_tokens: int = 48,
) -> dict:
    """Ask every question greedily and score the answers (see `summarize`)."""
    questions = questions or load_questions()
    answers = lm.greedy_answers(
        [q.question for q in questions],
        system=system,
        max_new_tokens=max_new_tokens,
        desc="identity questions",
    )
    scored = [
        score_answer(q, a.text, name, author, old_names)
        for q, a in zip(questions, answers, strict=True)
    ]
    return {**summarize(scored, name, author, old_names), "system": system}


def default_old_names(model: str) -> list[str]:
    """The name and maker an embedded model answers with before tuning ([] for others)."""
    from tunesmith.model.embedded import EMBEDDED

    return list(EMBEDDED[model].identity) if model in EMBEDDED else []
