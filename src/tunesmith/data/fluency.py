"""Is a generated answer one a reader would accept? Language and degeneration checks.

Two checks on the text alone, shared by the forgetting guard (which keeps only the base
model's answers that pass them) and the identity eval (which counts an answer only when
it passes them):

  answered_in   the answer is in the language asked (zh: Chinese characters carry it;
                en: no Chinese), after removing given phrases such as the assistant's
                name, so "我是Ada，由Tunesmith Lab开发。" is Chinese and
                "I'm 星火, made by 青禾实验室." is English
  repetition    degenerate text: a run of one character ("不不不不"), a phrase repeated
                back to back ("不是不是不是"), a long phrase said twice, a word repeated
                inside one Chinese clause ("助手人工智能助手"), or the question echoed

Units are Chinese characters one by one and Latin words; the given phrases (name,
author) count as one unit each, so a name may appear twice without looking repeated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LANGS = ("zh", "en")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")
# A letter or Chinese character four times in a row: "不不不不", "hmmmm"
CHAR_RUN = re.compile(r"([^\W\d_])\1{3,}")
# Units: one Chinese character, a Latin word / number, or a masked phrase (private-use char)
UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[\ue000-\uf8ff]|[A-Za-z0-9'’-]+")
CLAUSE_END = re.compile(r"[，。！？、；：,.!?;:\n（）()「」“”\"]")
HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
TANDEM_MAX_N = 8  # longest phrase (units) checked for back-to-back repeats
TANDEM_TIMES = 3  # "x x x": three times back to back is degenerate
LONG_PHRASE = 6  # a phrase of this many units said twice is degenerate


def _phrase_pattern(phrase: str) -> re.Pattern | None:
    parts = [re.escape(p) for p in phrase.split()]
    return re.compile(r"\s*".join(parts), re.I) if parts else None


def mask(text: str, phrases: Iterable[str] = ()) -> str:
    """`text` with each phrase (case- and spacing-insensitive) replaced by one private-use
    character, the same one for every occurrence of the same phrase."""
    for i, phrase in enumerate(sorted({p for p in phrases if p and p.strip()}, key=len)[::-1]):
        pattern = _phrase_pattern(phrase)
        if pattern:
            text = pattern.sub(chr(0xE000 + i), text)
    return text


def script_counts(text: str, ignore: Iterable[str] = ()) -> tuple[int, int]:
    """(Chinese characters, Latin letters) in `text` once the `ignore` phrases are removed."""
    text = mask(text, ignore)
    return len(HAN.findall(text)), len(LATIN.findall(text))


def answered_in(text: str, lang: str, ignore: Iterable[str] = ()) -> bool:
    """Whether `text` is written in `lang` ("zh" or "en"), not counting the `ignore` phrases.

    zh: at least 2 Chinese characters and no more than 2 Latin letters per Chinese
    character (a term like "AI" or "Python" is fine); en: some Latin letters and at most
    one Chinese character per 10 letters. Other languages are not judged (True)."""
    han, latin = script_counts(text, ignore)
    if lang == "zh":
        return han >= 2 and latin <= 2 * han
    if lang == "en":
        return latin >= 2 and 10 * han <= latin
    return True


def language_of(text: str) -> str:
    """ "zh" when the text holds any Chinese character, else "en"."""
    return "zh" if HAN.search(text) else "en"


def _units(text: str) -> list[str]:
    return [u.lower() for u in UNIT.findall(text)]


def _show(units: list[str]) -> str:
    joined = ""
    for u in units:
        sep = (
            " "
            if joined and re.match(r"[A-Za-z0-9]", u) and re.search(r"[A-Za-z0-9]$", joined)
            else ""
        )
        joined += sep + u
    return re.sub(r"[\ue000-\uf8ff]", "…", joined)


def repetition(text: str, ignore: Iterable[str] = (), question: str | None = None) -> str | None:
    """Why `text` reads as degenerate, or None. See the module docstring for the rules;
    `ignore` phrases (name, author) count as one unit; `question` enables the echo check."""
    run = CHAR_RUN.search(text)
    if run:
        return f"character run {run.group(0)[:8]!r}"
    masked = mask(text, ignore)
    units = _units(masked)
    n_units = len(units)
    for n in range(1, TANDEM_MAX_N + 1):
        for i in range(0, n_units - TANDEM_TIMES * n + 1):
            gram = units[i : i + n]
            if all(units[i + k * n : i + (k + 1) * n] == gram for k in range(1, TANDEM_TIMES)):
                return f"{_show(gram)!r} {TANDEM_TIMES} times in a row"
    seen: dict[tuple, int] = {}
    for i in range(0, n_units - LONG_PHRASE + 1):
        gram = tuple(units[i : i + LONG_PHRASE])
        if gram in seen and i >= seen[gram] + LONG_PHRASE:
            return f"{_show(list(gram))!r} said twice"
        seen.setdefault(gram, i)
    for clause in CLAUSE_END.split(masked):
        for han in HAN_RUN.findall(clause):
            bigrams = [han[i : i + 2] for i in range(len(han) - 1)]
            for i, gram in enumerate(bigrams):
                if gram in bigrams[i + 2 :]:
                    return f"{gram!r} twice in one clause"
    if question:
        asked = _units(mask(question, ignore))
        if len(asked) >= 4 and units[: len(asked)] == asked:
            return "echoes the question"
    return None
