"""Plain-text and Markdown views of the eval reports (the JSON is the record; these are for people)."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.fileio import atomic_write_text


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _one_line(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def identity_text(report: dict, answers: bool = True) -> str:
    langs = ", ".join(
        f"{lang} {pct(v['hit_rate'])} ({v['hits']}/{v['questions']})"
        for lang, v in report["by_lang"].items()
    )
    keyword = ", ".join(
        f"{lang} {pct(v['keyword_hit_rate'])} ({v['keyword_hits']}/{v['questions']})"
        for lang, v in report["by_lang"].items()
    )
    failed = ", ".join(f"{check} {n}" for check, n in report["failed_checks"].items())
    lines = [
        f"identity: {report['name']} by {report['author']}",
        f"  identity rate (every check) {pct(report['hit_rate'])} "
        f"({report['hits']}/{report['questions']}): {langs}",
        f"  keyword hit rate {pct(report['keyword_hit_rate'])} "
        f"({report['keyword_hits']}/{report['questions']}): {keyword}",
        f"  answers failing each check: {failed}",
        f"  states the name {pct(report['name_rate'])}, the author {pct(report['author_rate'])} (where asked)",
        f"  claims the old identity ({', '.join(report['old_names']) or 'none given'}) "
        f"in {report['old_claims']} answers",
    ]
    if answers:
        for a in report["answers"]:
            mark = "ok  " if a["hit"] else "MISS"
            lines.append(f"  {mark} [{a['lang']}] {a['question']} -> {_one_line(a['answer'])}")
            lines += [f"         {why}" for why in a["failed"]]
    return "\n".join(lines)


def retention_text(report: dict, answers: bool = True) -> str:
    facts, drift, leak = report["facts"], report["drift"], report["leakage"]
    lines = [
        "retention:",
        f"  facts: base {facts['base_correct']}/{facts['prompts']}, tuned {facts['tuned_correct']}/"
        f"{facts['prompts']}; kept {facts['kept']}/{facts['base_correct']} "
        f"of the base's correct answers ({pct(facts['retention'])})",
        f"  drift: mean log-prob of the base's answers {drift['base_logprob']:.3f} (base) -> "
        f"{drift['tuned_logprob']:.3f} (tuned), delta {drift['delta']:+.3f}/token",
    ]
    if leak is None:
        lines.append("  leakage: not measured (give --name / --author)")
    else:
        lines.append(
            f"  leakage: {leak['leaked']}/{leak['answers']} answers mention the new identity "
            f"unasked ({pct(leak['rate'])})"
        )
    if answers:
        for f in facts["lost"]:
            lines.append(
                f"  LOST {f['prompt']} -> {_one_line(f['tuned_answer'])} "
                f"(base: {_one_line(f['base_answer'], 60)})"
            )
        for f in (leak or {}).get("examples", []):
            lines.append(f"  LEAK {f['prompt']} -> {_one_line(f['answer'])}")
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report, ensure_ascii=False, indent=2))


def _frac(hits: int, total: int) -> str:
    return f"{pct(hits / total if total else None)} ({hits}/{total})"


def workflow_markdown(report: dict) -> str:
    """The before/after report of `tunesmith identity` (report.md, also printed)."""
    run, ib, it = report["run"], report["identity"]["base"], report["identity"]["tuned"]
    facts, drift, leak = (
        report["retention"]["facts"],
        report["retention"]["drift"],
        report["retention"]["leakage"],
    )
    base_leak = report["base_leakage"]
    rows = []
    for label, hits in (
        ("identity (every check holds)", "hits"),
        ("keyword hit rate (name / author stated)", "keyword_hits"),
    ):
        rows.append((label, _frac(ib[hits], ib["questions"]), _frac(it[hits], it["questions"])))
        for lang in it["by_lang"]:
            b = ib["by_lang"].get(lang, {hits: 0, "questions": 0})
            t = it["by_lang"][lang]
            rows.append(
                (f"  {lang}", _frac(b[hits], b["questions"]), _frac(t[hits], t["questions"]))
            )
    for check in it["failed_checks"]:
        if check != "keyword":
            rows.append(
                (
                    f"  answers failing: {check}",
                    str(ib["failed_checks"][check]),
                    str(it["failed_checks"][check]),
                )
            )
    old = ", ".join(it["old_names"]) or "none given"
    rows += [
        (
            f"old identity claimed ({old})",
            f"{ib['old_claims']} answers",
            f"{it['old_claims']} answers",
        ),
        (
            "factual prompts correct",
            f"{facts['base_correct']}/{facts['prompts']}",
            f"{facts['tuned_correct']}/{facts['prompts']}",
        ),
        ("base's correct answers kept", "", _frac(facts["kept"], facts["base_correct"])),
        (
            "drift: log-prob/token of base answers",
            f"{drift['base_logprob']:.3f}",
            f"{drift['tuned_logprob']:.3f} ({drift['delta']:+.3f})",
        ),
        (
            "leakage (new identity unasked)",
            _frac(base_leak["leaked"], base_leak["answers"]),
            _frac(leak["leaked"], leak["answers"]),
        ),
    ]
    total = sum(report["seconds"].values())
    lines = [
        f"# Identity report: {run['name']} by {run['author']}",
        "",
        f"Base `{run['model']}` -> merged model `{report['merged_model']}`",
        f'(system prompt: "{report["system_prompt"]}").',
        "",
        "| | base | tuned |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
    ]
    if facts["lost"]:
        lines.append("Lost facts:")
        lines += [f"- {f['prompt']} -> {_one_line(f['tuned_answer'], 80)}" for f in facts["lost"]]
        lines.append("")
    if leak["examples"]:
        lines.append("Leaks:")
        lines += [f"- {f['prompt']} -> {_one_line(f['answer'], 80)}" for f in leak["examples"]]
        lines.append("")
    misses = [a for a in it["answers"] if not a["hit"]]
    if misses:
        lines.append("Identity misses of the tuned model (each failed check):")
        lines += [
            f"- {a['question']} -> {_one_line(a['answer'], 80)} [{'; '.join(a['failed'])}]"
            for a in misses
        ]
        lines.append("")
    samples = []
    for lang in it["by_lang"]:
        samples += [a for a in it["answers"] if a["lang"] == lang and a["hit"]][:3]
    lines.append("Sample answers of the tuned model (held-out questions):")
    lines += [f"- {a['question']} -> {_one_line(a['answer'], 80)}" for a in samples]
    timing = ", ".join(f"{s} {v:.0f} s" for s, v in report["seconds"].items())
    lines += [
        "",
        f"Time: {timing} (total {total:.0f} s).",
        "",
        "Talk to it:",
        "",
        "```",
        report["commands"]["chat"],
        report["commands"]["webui"],
        report["commands"]["serve"],
        "```",
        "",
    ]
    return "\n".join(lines)
