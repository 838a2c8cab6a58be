"""The forgetting guard's data: the base model's own answers to general prompts.

A small identity set trains the model to say its new name everywhere, including
where nobody asked ("Paris. I am Ada."). Mixing in the base model's own greedy
answers to general prompts (self-distillation) anchors everything else to what
the base already did, with nothing downloaded. The answers are generated once
and cached in the work dir, keyed by model, prompts and length.

Only answers a reader would accept are kept (data/fluency): in the prompt's language,
not degenerate, not an echo of the prompt. A small base model often answers a Chinese
prompt in English or by repeating it (SmolLM2-135M: 25 of the 28 shipped Chinese
prompts); training on those would teach the tuned model the same habits. The shipped
prompts therefore carry `references`, written answers for the prompts a small model
cannot answer; the guard trains on those instead of asking the base.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

from tunesmith.config.schema import Config, DataFile
from tunesmith.data import jsonio
from tunesmith.data.fluency import answered_in, language_of, repetition
from tunesmith.errors import UserError, where
from tunesmith.fileio import atomic_write_text, read_text
from tunesmith.model.generate import Generator

GUARD_DIR = "guard"
_SENTENCE_END = re.compile(r"[.!?。！？\n]")


def default_prompts_path() -> Path:
    return Path(str(resources.files("tunesmith.data") / "assets" / "general_prompts.json"))


def load_general_prompts(path: str | Path | None = None) -> list[str]:
    """The shipped prompts, or a file of your own: a JSON list, {"prompts": [...]}, or one per line."""
    path = Path(path) if path else default_prompts_path()
    if not path.is_file():
        raise UserError(
            f"guard.prompts: {path} does not exist; give a file of prompts or leave it null"
        )
    text = read_text(path, "guard.prompts file")
    if path.suffix == ".json":
        try:
            doc = jsonio.loads(text, path)
        except json.JSONDecodeError as err:
            raise UserError(f"{where(path, err.lineno)}: not valid JSON ({err.msg})") from err
        prompts = doc.get("prompts") if isinstance(doc, dict) else doc
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts or [] if isinstance(p, str) and p.strip()]
    if not prompts:
        raise UserError(f"guard.prompts: {path} holds no prompts")
    return prompts


def load_references(path: str | Path | None = None) -> dict[str, str]:
    """{prompt: answer} from the prompts file's `references` (the shipped file has them for
    its Chinese prompts; a file of your own may add them; other files have none)."""
    path = Path(path) if path else default_prompts_path()
    if path.suffix != ".json":
        return {}
    try:
        doc = jsonio.loads(read_text(path, "guard.prompts file"), path)
    except json.JSONDecodeError as err:
        raise UserError(f"{where(path, err.lineno)}: not valid JSON ({err.msg})") from err
    refs = doc.get("references", {}) if isinstance(doc, dict) else {}
    if not isinstance(refs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in refs.items()
    ):
        raise UserError(f"{path}: 'references' must map each prompt to a non-empty answer")
    return refs


def whole_sentences(text: str) -> str:
    """An answer cut by the length limit, trimmed back to its last full sentence.

    Training on a cut-off answer followed by end-of-turn would teach the model to
    stop mid-sentence; with no full sentence at all the answer is dropped ("")."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def acceptable(prompt: str, answer: str) -> bool:
    """Whether a base answer is fit to train on: in the prompt's language, not degenerate."""
    return bool(answer) and (
        answered_in(answer, language_of(prompt)) and repetition(answer, question=prompt) is None
    )


def distill(generator: Generator, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """Conversation records: each prompt with the model's own greedy answer (no system:
    training gives them the config's system prompt, so the new identity asks for them).
    Answers that fail `acceptable` are left out."""
    answers = generator.greedy_answers(
        prompts, max_new_tokens=max_new_tokens, desc="guard: base answers"
    )
    records = []
    for prompt, answer in zip(prompts, answers, strict=True):
        text = answer.text if answer.finished else whole_sentences(answer.text)
        if acceptable(prompt, text):
            records.append({"conversation": [{"input": prompt, "output": text}]})
    return records


def count_records(cfg: Config) -> int:
    """Records in the config's data files, with their repeat counts."""
    from tunesmith.data.formats import iter_records

    return sum(sum(1 for _ in iter_records(f.path)) * f.repeat for f in cfg.data.files)


def mix_size(ratio: float, identity_records: int) -> int:
    """General records to add: `ratio` per identity record."""
    return round(ratio * identity_records)


def _first_input(record: dict) -> str:
    turns = record.get("conversation") or []
    return str(turns[0].get("input", "")) if turns and isinstance(turns[0], dict) else ""


def mix_plan(cfg: Config, work_dir: str | Path) -> dict[str, int]:
    """General records to add per language: `guard.ratio_by_lang[lang]` (else `guard.ratio`)
    per training record of that language (the language of its first user turn), over the
    data files other than the mix itself."""
    from tunesmith.data.formats import iter_records

    mix = mix_path(work_dir)
    counts: dict[str, int] = {}
    for f in cfg.data.files:
        if Path(f.path) == mix:
            continue
        for _, record in iter_records(f.path):  # (where, record)
            lang = language_of(_first_input(record))
            counts[lang] = counts.get(lang, 0) + f.repeat
    ratios = cfg.guard.ratio_by_lang
    return {lang: mix_size(ratios.get(lang, cfg.guard.ratio), n) for lang, n in counts.items()}


def _key(cfg: Config, prompts: list[str], references: dict[str, str]) -> dict:
    text = json.dumps([prompts, references], ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {"model": cfg.model.path, "prompts": digest, "max_new_tokens": cfg.guard.max_new_tokens}


def base_answers(cfg: Config, work_dir: str | Path) -> list[dict]:
    """The distilled records (base answers, or references where given), from
    `work_dir/guard/answers.jsonl` when made with the same key."""
    out = Path(work_dir) / GUARD_DIR
    prompts = load_general_prompts(cfg.guard.prompts)
    references = load_references(cfg.guard.prompts)
    key = _key(cfg, prompts, references)
    answers, key_file = out / "answers.jsonl", out / "key.json"
    if answers.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
        return [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]

    asked = [p for p in prompts if p not in references]
    records = []
    if asked:
        records = distill(Generator.load(cfg.model.path), asked, cfg.guard.max_new_tokens)
    records += [
        {"conversation": [{"input": p, "output": references[p]}]}
        for p in prompts
        if p in references
    ]
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(answers, records)
    atomic_write_text(key_file, json.dumps(key))
    return records


def mix_path(work_dir: str | Path) -> Path:
    return Path(work_dir) / GUARD_DIR / "general_mix.jsonl"


def planned_guard(cfg: Config, work_dir: str | Path) -> tuple[Config, int]:
    """(`cfg` with the guard's mix file in data.files, records the mix will hold: for
    `guard.mix: each` the number of prompts, an upper bound); nothing
    is generated or written, so a run can be checked (and refused) before that work.

    Reads the data files (to count records) and the prompts file: their mistakes show here.
    Unchanged (and 0) when the guard is off or already planned."""
    if not cfg.guard.enabled or (
        cfg.guard.mix == "ratio"
        and cfg.guard.ratio == 0
        and not any(cfg.guard.ratio_by_lang.values())
    ):
        return cfg, 0
    prompts = load_general_prompts(cfg.guard.prompts)
    mix = mix_path(work_dir)
    if any(Path(f.path) == mix for f in cfg.data.files):
        return cfg, 0
    if cfg.guard.mix == "each":
        wanted = len(prompts)  # at most: answers a reader would not accept are left out
    else:
        wanted = sum(mix_plan(cfg, work_dir).values())
    if wanted == 0:
        return cfg, 0
    data = cfg.data.model_copy(update={"files": [*cfg.data.files, DataFile(path=str(mix))]})
    return cfg.model_copy(update={"data": data}), wanted


def write_guard_mix(cfg: Config, work_dir: str | Path, wanted: int) -> Config:
    """Generate (or reuse) the base model's answers and write the mix of `wanted` records
    planned by `planned_guard`; returns `cfg`, without the mix file when the base model
    gave no usable answer."""
    mix = mix_path(work_dir)
    if wanted == 0:
        return cfg
    records = base_answers(cfg, work_dir)
    if not records:
        files = [f for f in cfg.data.files if Path(f.path) != mix]
        return cfg.model_copy(update={"data": cfg.data.model_copy(update={"files": files})})
    if cfg.guard.mix == "each":
        _write_jsonl(mix, records)
        return cfg
    by_lang: dict[str, list[dict]] = {}
    for record in records:
        by_lang.setdefault(language_of(_first_input(record)), []).append(record)
    chosen = []
    for lang, n in sorted(mix_plan(cfg, work_dir).items()):
        pool = by_lang.get(lang) or records  # no general answer in that language: any
        chosen += [pool[i % len(pool)] for i in range(n)]
    _write_jsonl(mix, chosen)
    return cfg


def with_guard(cfg: Config, work_dir: str | Path) -> Config:
    """`cfg` with the guard's general data added to data.files (unchanged when the guard is off).

    The mix holds `guard.ratio` general records per identity record (`guard.ratio_by_lang`
    per language), cycling through the distilled answers of the same language; with
    `guard.mix: each`, every distilled answer once. Calling it again with the same work dir adds nothing twice."""
    planned, wanted = planned_guard(cfg, work_dir)
    return write_guard_mix(planned, work_dir, wanted)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
