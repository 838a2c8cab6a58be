"""Identity eval: does the model answer held-out "who are you" questions as its new self?

Each answer gets the keyword checks: it states the new name (where the question asks
for it), it states the new author (where the question asks about the maker), and it
does not claim the old identity ("SmolLM", "Hugging Face"; a mention right after a
negation, "I am not SmolLM" / "不是SmolLM", is not a claim). These alone call broken
answers hits ("I'm 星火" to a Chinese question, "我是星火，是青禾实验室的创造者。",
"不是不是不不不不不"), so an answer counts (`hit`) only when it also:

  language     is written in the question's language (data/fluency.answered_in)
  stopped      ended on its own, with the end-of-turn token, before the length limit
  repetition   is not degenerate (data/fluency.repetition: character runs, repeated
               phrases, the question echoed)
  author_role  gives the author its role: the author made the assistant; the assistant
               is not the author, nor its creator ("我是青禾实验室", "I created Tunesmith Lab")

The keyword-only result stays in the report as `keyword_hit` (the measure used before).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tunesmith.data import jsonio
from tunesmith.data.fluency import answered_in, repetition
from tunesmith.errors import UserError, where
from tunesmith.fileio import read_text

ASKS = ("name", "author", "both")
CHECKS = ("keyword", "language", "stopped", "repetition", "author_role")
MAX_NEW_TOKENS = 80  # a fluent Chinese answer of ~30 characters is ~60 SmolLM2 tokens
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
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such {what} file")
    text = read_text(path, f"{what} file")
    try:
        return jsonio.loads(text, path)
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


# Author-role mistakes, on the answer with the name as N and the author as A.
_N, _A = "\ue000", "\ue001"
_MAKER_ZH = "创造者|创始人|创建者|创办人|开发者|开发人员|缔造者|发明者|设计者|主人|老板|所有者|拥有者|负责人|作者"
_MAKER_EN = r"creator|founder|developer|maker|owner|inventor|builder|designer|author|boss"
_MADE_ZH = "开发|创造|创建|创办|创立|发明|打造|设计|训练|研发|建立|制作|写"
_MADE_EN = r"created|founded|built|developed|made|own|invented|designed|trained|started|run"
_AUTHOR_ROLE = [
    # "我是青禾实验室。", "我叫青禾实验室": the assistant says it is the author
    re.compile(rf"(我是|我叫|我的名字是|我的名字叫|叫我)\s*{_A}\s*(?=$|[，。！？,.!?；;\s])"),
    re.compile(
        rf"(?<![A-Za-z])(I am|I'm|my name is|call me)\s+(the\s+)?{_A}\s*(?=$|[,.!?;])", re.I
    ),
    # "我是星火，是青禾实验室的创造者", "I'm the creator of Tunesmith Lab"
    re.compile(rf"是\s*{_A}\s*的\s*({_MAKER_ZH})(?!\s*(们|团队)?\s*(所|一起)?\s*({_MADE_ZH}))"),
    re.compile(
        rf"(?<![A-Za-z])(I am|I'm|{_N} is|{_N},)\s+(the|a|an|its)?\s*({_MAKER_EN})s?\s+(of|at|behind)\s+{_A}",
        re.I,
    ),
    re.compile(rf"(?<![A-Za-z])(I am|I'm|{_N} is)\s+{_A}[’']s\s+({_MAKER_EN})", re.I),
    # "我创造了青禾实验室", "I founded Tunesmith Lab", "青禾实验室是我开发的"
    re.compile(rf"(我|{_N})\s*(亲手|一手)?({_MADE_ZH})了\s*{_A}"),
    re.compile(rf"(?<![A-Za-z])(I|{_N})\s+({_MADE_EN})\s+{_A}", re.I),
    re.compile(rf"{_A}\s*(是|由)\s*(我|{_N})\s*(的)?\s*({_MADE_ZH}|{_MAKER_ZH}|产品|助手)"),
    re.compile(rf"{_A}\s+(is|was)\s+(my|{_N}[’']s)\s+(creation|product|assistant|company)", re.I),
    re.compile(rf"{_A}\s+was\s+({_MADE_EN})\s+by\s+(me|{_N})(?![A-Za-z])", re.I),
]


def _mask_identity(answer: str, name: str, author: str) -> str:
    """The answer with the author as _A and the name as _N (the longer one first)."""
    for phrase, mark in sorted(((author, _A), (name, _N)), key=lambda x: -len(x[0])):
        if phrase.strip():
            answer = _pattern(phrase).sub(mark, answer)
    return answer


def author_role_error(answer: str, name: str, author: str) -> str | None:
    """The words where the answer makes itself the author or the author's maker, or None.

    "我是星火，是青禾实验室的创造者" -> "青禾实验室的创造者"; "I am Tunesmith Lab." ->
    "I am Tunesmith Lab". "我是青禾实验室开发的助手" and "Tunesmith Lab's assistant" are fine."""
    masked = _mask_identity(answer, name, author)
    for pattern in _AUTHOR_ROLE:
        found = pattern.search(masked)
        if found:
            return found.group(0).replace(_A, author).replace(_N, name).strip()
    return None


def score_answer(
    question: IdentityQuestion,
    answer: str,
    name: str,
    author: str,
    old_names=(),
    finished: bool = True,
) -> dict:
    """Scores of one answer. `keyword_hit`: everything the question asks is stated and nothing
    old is claimed; `hit`: that, and every other check in CHECKS holds. `failed` says why not,
    one entry per failed check. `finished`: the answer ended with end-of-turn, not the limit."""
    name_ok = mentions(answer, name)
    author_ok = mentions(answer, author)
    old = claimed_old(answer, old_names)
    need_name = question.asks in ("name", "both")
    need_author = question.asks in ("author", "both")
    keyword_hit = (name_ok or not need_name) and (author_ok or not need_author) and not old
    own = (name, author)
    in_lang = answered_in(answer, question.lang, ignore=(*own, *old_names))
    repeated = repetition(answer, ignore=own, question=question.question)
    role = author_role_error(answer, name, author)
    failed = []
    if need_name and not name_ok:
        failed.append("keyword: no name")
    if need_author and not author_ok:
        failed.append("keyword: no author")
    if old:
        failed.append(f"keyword: claims {', '.join(old)}")
    if not in_lang:
        failed.append(f"language: not answered in {question.lang}")
    if not finished:
        failed.append("stopped: cut at the length limit")
    if repeated:
        failed.append(f"repetition: {repeated}")
    if role:
        failed.append(f"author_role: {role!r}")
    return {
        **asdict(question),
        "answer": answer,
        "finished": finished,
        "name_ok": name_ok,
        "author_ok": author_ok,
        "old_claimed": old,
        "keyword_hit": keyword_hit,
        "checks": {
            "keyword": keyword_hit,
            "language": in_lang,
            "stopped": finished,
            "repetition": repeated is None,
            "author_role": role is None,
        },
        "failed": failed,
        "hit": not failed,
    }


def _rate(rows: list[dict], key: str = "hit") -> float:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else 0.0


def summarize(scored: list[dict], name: str, author: str, old_names=()) -> dict:
    """The identity report: strict and keyword hit rates overall and per language, how many
    answers failed each check, old-identity claims, every answer."""
    by_lang = {}
    for lang in sorted({r["lang"] for r in scored}):
        rows = [r for r in scored if r["lang"] == lang]
        by_lang[lang] = {
            "questions": len(rows),
            "hits": sum(r["hit"] for r in rows),
            "hit_rate": _rate(rows),
            "keyword_hits": sum(r["keyword_hit"] for r in rows),
            "keyword_hit_rate": _rate(rows, "keyword_hit"),
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
        "keyword_hits": sum(r["keyword_hit"] for r in scored),
        "keyword_hit_rate": _rate(scored, "keyword_hit"),
        "failed_checks": {c: sum(not r["checks"][c] for r in scored) for c in CHECKS},
        "by_lang": by_lang,
        "name_rate": _rate(asked_name, "name_ok"),
        "author_rate": _rate(asked_author, "author_ok"),
        "old_claims": sum(bool(r["old_claimed"]) for r in scored),
        "answers": scored,
    }


def requests(
    questions: list[IdentityQuestion], max_new_tokens: int = MAX_NEW_TOKENS
) -> list[tuple[str, int]]:
    """(prompt, max_new_tokens) of every answer `evaluate_identity` asks for."""
    return [(q.question, max_new_tokens) for q in questions]


def evaluate_identity(
    lm,
    name: str,
    author: str,
    questions: list[IdentityQuestion] | None = None,
    old_names=(),
    system: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
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
        score_answer(q, a.text, name, author, old_names, a.finished)
        for q, a in zip(questions, answers, strict=True)
    ]
    return {
        **summarize(scored, name, author, old_names),
        "system": system,
        "max_new_tokens": max_new_tokens,
    }


def default_old_names(model: str) -> list[str]:
    """The name and maker an embedded model answers with before tuning ([] for others)."""
    from tunesmith.model.embedded import EMBEDDED

    return list(EMBEDDED[model].identity) if model in EMBEDDED else []
