"""`tunesmith identity`: make a chat model answer as your assistant, and prove it took.

Stages, each reading the one before it from the work dir:

    data        identity records (`data identity`)          data/identity.jsonl
    guard       the base's own answers to general prompts    train/guard/
    base_eval   identity + retention answers of the base     eval/base.json
    train       LoRA with the model's identity recipe        train/iter_N/
    export      the adapter (PEFT dir, training template)    adapter/
    merge       base + adapter -> a standalone HF model      merged/
    tuned_eval  the same evals on the merged model           eval/tuned.json
    report      before/after                                 report.json, report.md

With `--preference dpo` (or ipo / orpo / simpo) four stages come after merge
(workflow/identity_preference.py): sft_eval (the evals on the SFT model), pairs (base
answers as rejected, identity answers as chosen), preference (LoRA on the merged SFT model),
preference_merge (-> preference/merged/); tuned_eval then evaluates that model.

`manifest.json` records who the run is for and which stages are done; a re-run
with the same work dir skips finished stages (training resumes from its newest
checkpoint). A work dir holding a different run is refused, never overwritten.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.config.schema import Config, DataFile
from tunesmith.data.identity import check_text
from tunesmith.data.templates import check_template_name
from tunesmith.errors import UserError
from tunesmith.fileio import atomic_write_text, check_writable_dir
from tunesmith.model.generate import Generator
from tunesmith.model.load import release_memory

STAGES = ("data", "guard", "base_eval", "train", "export", "merge", "tuned_eval", "report")
PREFERENCE_STAGES = ("sft_eval", "pairs", "preference", "preference_merge")
MANIFEST = "manifest.json"
# The system prompt trained and exported by default: a neutral one, so the identity lives in
# the weights (it holds under a client's own system prompt too). "You are NAME, an AI
# assistant developed by AUTHOR." did as well on identity, facts and leaks, and cost ~20
# tokens per record for a Chinese pair: 80 rows per epoch for 星火 / 青禾实验室 against 61
# (docs/benchmarks.md, "One epoch over every record").
DEFAULT_SYSTEM = "You are a helpful AI assistant."
EVAL_BATCH = 128  # rows per generation batch in the evals (the shipped sets: 108 prompts)


@dataclass(frozen=True)
class IdentityRun:
    """What makes a run: a work dir holds exactly one."""

    name: str
    author: str
    model: str
    langs: tuple[str, ...] = ("zh", "en")
    config: str | None = None
    overrides: tuple[str, ...] = ()
    system: str | None = None
    questions: str | None = None  # identity eval questions (default: the shipped set)
    prompts: str | None = None  # retention eval prompts (default: the shipped set)
    old_names: tuple[str, ...] | None = None  # default: the embedded model's own names
    preference: str | None = None  # dpo | ipo | orpo | simpo: a preference stage after SFT

    @property
    def system_prompt(self) -> str:
        return self.system or DEFAULT_SYSTEM


@dataclass
class Manifest:
    run: dict
    stages: dict = field(default_factory=dict)  # stage -> {"seconds": float}

    @classmethod
    def read(cls, work_dir: Path) -> Manifest | None:
        path = work_dir / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path}:{err.lineno}: not valid JSON; delete the work dir to start over"
            ) from err
        return cls(data.get("run", {}), data.get("stages", {}))

    def write(self, work_dir: Path) -> None:
        atomic_write_text(
            work_dir / MANIFEST,
            json.dumps({"run": self.run, "stages": self.stages}, ensure_ascii=False, indent=2),
        )


def default_recipe(model: str) -> str:
    """The identity recipe of an embedded model; for any other model the embedded one's
    recipe with the model swapped in (pass --config for a 7B recipe on a GPU)."""
    from tunesmith.model.embedded import DEFAULT_MODEL, EMBEDDED

    return EMBEDDED.get(model, EMBEDDED[DEFAULT_MODEL]).recipe


def build_config(run: IdentityRun, work_dir: Path) -> Config:
    """The training config: the recipe + overrides, with the identity data, the new system
    prompt (so exported templates default to it) and the forgetting guard on unless turned off."""
    from tunesmith.config.loader import load_config

    cfg = load_config(run.config or default_recipe(run.model), list(run.overrides))
    given = {o.split("=", 1)[0].strip() for o in run.overrides}
    repeat = cfg.data.files[0].repeat if cfg.data.files else 1
    model = cfg.model.model_copy(update={"path": run.model})
    data = cfg.data.model_copy(
        update={
            "files": [
                DataFile(
                    path=str(work_dir / "data" / "identity.jsonl"),
                    format="conversation",
                    repeat=repeat,
                )
            ],
            "system": run.system_prompt,
        }
    )
    guard = cfg.guard.model_copy(update={} if "guard.enabled" in given else {"enabled": True})
    runtime = {"work_dir": str(work_dir / "train")}
    if not any(k.startswith("runtime.evaluation") for k in given):
        runtime["evaluation_inputs"] = []  # the workflow's own evals replace the chat samples
    runtime = cfg.runtime.model_copy(update=runtime)
    return cfg.model_copy(update={"model": model, "data": data, "guard": guard, "runtime": runtime})


def check_chat_model(cfg: Config) -> None:
    """A model without a chat template needs a named template in the config."""
    from tunesmith.model.load import load_tokenizer

    if cfg.data.template != "auto":
        return
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{cfg.model.path} has no chat template: it is not a chat model. Use a chat/instruct "
            f"model, or name a template (e.g. `data.template=chatml`)"
        )


class IdentityWorkflow:
    """The stages of one run in one work dir, each skipped when the manifest says it is done."""

    def __init__(self, run: IdentityRun, work_dir: str | Path):
        self.run = run
        self.work_dir = Path(work_dir).expanduser()
        self.cfg: Config | None = None
        self.manifest: Manifest | None = None
        self.old_names: list[str] = []

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check everything the user gave before anything is written."""
        from tunesmith.data.identity import LANGUAGES
        from tunesmith.eval.identity import default_old_names

        run = self.run
        check_text("name", run.name)
        check_text("author", run.author)
        if not run.langs or any(lang not in LANGUAGES for lang in run.langs):
            raise UserError(f"--lang {','.join(run.langs)}: use a comma-separated subset of zh,en")
        self._check_work_dir()
        from tunesmith.eval.identity import load_questions
        from tunesmith.eval.retention import load_prompts

        load_questions(run.questions)
        load_prompts(run.prompts)
        self.cfg = build_config(run, self.work_dir)
        check_template_name(self.cfg.data.template)
        check_chat_model(self.cfg)
        names = run.old_names
        self.old_names = default_old_names(run.model) if names is None else list(names)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.manifest is None:
            self.manifest = Manifest(self._run_record())
            self.manifest.write(self.work_dir)

    def _run_record(self) -> dict:
        record = asdict(self.run)
        record["langs"], record["overrides"] = list(self.run.langs), list(self.run.overrides)
        if self.run.old_names is not None:
            record["old_names"] = list(self.run.old_names)
        if self.run.preference is None:
            record.pop("preference")  # runs made before the option read the same
        return record

    def _check_work_dir(self) -> None:
        check_writable_dir(self.work_dir, "work dir")
        manifest = Manifest.read(self.work_dir)
        if manifest is None:
            if self.work_dir.exists() and any(self.work_dir.iterdir()):
                raise UserError(
                    f"{self.work_dir} is not empty and holds no identity run ({MANIFEST}): "
                    "pass a new --work-dir"
                )
            return
        if manifest.run != self._run_record():
            was = manifest.run
            raise UserError(
                f"{self.work_dir} holds a different run ({was.get('name')!r} by {was.get('author')!r} "
                f"on {was.get('model')}): pass another --work-dir, or delete it to start over"
            )
        self.manifest = manifest

    # ------------------------------------------------------------------ the stages

    def execute(self) -> dict:
        """Run every stage not done yet; returns the report."""
        self.setup()
        stages = self.stages
        steps = [getattr(self, f"stage_{s}") for s in stages]
        for number, (stage, step) in enumerate(zip(stages, steps, strict=True), start=1):
            done = self.manifest.stages.get(stage)
            if done is not None:
                print(
                    f"[{number}/{len(stages)}] {stage}: done already ({done['seconds']:.0f} s), skipped",
                    flush=True,
                )
                continue
            print(f"[{number}/{len(stages)}] {stage} ...", flush=True)
            start = time.perf_counter()
            step()
            release_memory()  # the next stage loads a model again: none left from this one
            self.manifest.stages[stage] = {"seconds": round(time.perf_counter() - start, 1)}
            self.manifest.write(self.work_dir)
        return json.loads((self.work_dir / "report.json").read_text())

    @property
    def stages(self) -> tuple[str, ...]:
        if self.run.preference is None:
            return STAGES
        at = STAGES.index("merge") + 1
        return STAGES[:at] + PREFERENCE_STAGES + STAGES[at:]

    @property
    def final_model(self) -> Path:
        """The model tuned_eval measures and the report hands out."""
        return self.paths["preference_merged" if self.run.preference else "merged"]

    @property
    def paths(self) -> dict[str, Path]:
        w = self.work_dir
        return {
            "pairs": w / "data" / "pairs.jsonl",
            "preference": w / "preference" / "train",
            "preference_adapter": w / "preference" / "adapter",
            "preference_merged": w / "preference" / "merged",
            "sft_eval": w / "eval" / "sft.json",
            "data": w / "data" / "identity.jsonl",
            "train": w / "train",
            "adapter": w / "adapter",
            "merged": w / "merged",
            "base_eval": w / "eval" / "base.json",
            "tuned_eval": w / "eval" / "tuned.json",
        }

    def stage_data(self) -> None:
        from tunesmith.data.identity import generate_identity, write_jsonl

        # each question once (one "are you {{other}}?" name each): the recipe trains one
        # epoch, in which every record is seen exactly once
        records = generate_identity(
            self.run.name, self.run.author, langs=self.run.langs, others_per_question=1
        )
        write_jsonl(records, self.paths["data"])
        print(f"  {len(records)} identity records -> {self.paths['data']}")

    def stage_guard(self) -> None:
        from tunesmith.data.general import with_guard

        self.cfg = with_guard(self.cfg, self.paths["train"])
        if self.cfg.guard.enabled:
            how = (
                "every general answer once"
                if self.cfg.guard.mix == "each"
                else f"general data mixed in at ratio {self.cfg.guard.ratio}"
            )
            print(f"  {how}: {self.cfg.data.files[-1].path}")
        else:
            print("  forgetting guard off (guard.enabled=false)")

    def _full_cfg(self) -> Config:
        """The config with the guard's file added (made by stage_guard, read from its cache)."""
        from tunesmith.data.general import with_guard

        return with_guard(self.cfg, self.paths["train"])

    def stage_base_eval(self) -> None:
        self._evaluate(self.run.model, self.paths["base_eval"], base=None)

    def stage_train(self) -> None:
        from tunesmith.train.recipe import TrainRecipe

        recipe = TrainRecipe(self._full_cfg(), self.paths["train"], resume="auto")
        recipe.setup()
        result = recipe.train()
        if result.exit_code:
            raise UserError("training stopped by a signal: re-run the same command to resume")
        print(f"  {result.step} steps, {result.tokens:,} tokens, {result.seconds:.0f} s")

    def stage_export(self) -> None:
        from tunesmith.export.adapter import export_checkpoint

        out = self.paths["adapter"]
        if out.exists():  # a finished export is renamed into place whole: this one is ours
            import shutil

            shutil.rmtree(out)
        config = self.paths["train"] / "config.yaml"
        export_checkpoint(str(config), str(self.paths["train"]), str(out))

    def stage_merge(self) -> None:
        from tunesmith.export.merge import merge

        out = self.paths["merged"]
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result = merge(self.run.model, str(self.paths["adapter"]), str(out))
        for note in result.notes:
            print(f"  note: {note}")

    def stage_sft_eval(self) -> None:
        base = json.loads(self.paths["base_eval"].read_text())
        self._evaluate(str(self.paths["merged"]), self.paths["sft_eval"], base=base)

    def stage_pairs(self) -> None:
        from tunesmith.workflow.identity_preference import identity_pairs, write_pairs

        pairs = identity_pairs(self.paths["data"], Generator.load(self.run.model))
        write_pairs(pairs, self.paths["pairs"])
        print(f"  {len(pairs)} pairs (base answer rejected) -> {self.paths['pairs']}")

    def stage_preference(self) -> None:
        from tunesmith.train.recipe import TrainRecipe
        from tunesmith.workflow.identity_preference import preference_config

        cfg = preference_config(
            self.cfg,
            self.run.preference,
            self.paths["merged"],
            self.paths["pairs"],
            self.paths["preference"],
        )
        recipe = TrainRecipe(cfg, self.paths["preference"], resume="auto")
        recipe.setup()
        result = recipe.train()
        if result.exit_code:
            raise UserError("training stopped by a signal: re-run the same command to resume")
        print(f"  {result.step} steps, final loss {result.losses[-1]:.4f}, {result.seconds:.0f} s")

    def stage_preference_merge(self) -> None:
        import shutil

        from tunesmith.export.adapter import export_checkpoint
        from tunesmith.export.merge import merge

        adapter, out = self.paths["preference_adapter"], self.paths["preference_merged"]
        for path in (adapter, out):
            if path.exists():  # a finished export is renamed into place whole: this one is ours
                shutil.rmtree(path)
        train = self.paths["preference"]
        export_checkpoint(str(train / "config.yaml"), str(train), str(adapter))
        merge(str(self.paths["merged"]), str(adapter), str(out))

    def stage_tuned_eval(self) -> None:
        base = json.loads(self.paths["base_eval"].read_text())
        self._evaluate(str(self.final_model), self.paths["tuned_eval"], base=base)

    def _evaluate(self, model: str, out: Path, base: dict | None) -> None:
        """Identity and retention answers of one model, with no system prompt given: what a
        vanilla client sees (the merged model's template defaults to the new system prompt)."""
        from tunesmith.eval import identity as identity_eval
        from tunesmith.eval import retention
        from tunesmith.eval.report import write_json

        lm = Generator.load(model)
        questions = identity_eval.load_questions(self.run.questions)
        prompts = retention.load_prompts(self.run.prompts)
        # Every answer of both evaluations in one batch (the evaluations then read them):
        # one pass over the shared prompt prefix, finished rows leave the batch.
        asked = identity_eval.requests(questions) + retention.requests(prompts)
        lm.greedy_answers(
            [p for p, _ in asked],
            max_new_tokens=[n for _, n in asked],
            batch_size=EVAL_BATCH,
            desc="answers",
        )
        identity = identity_eval.evaluate_identity(
            lm, self.run.name, self.run.author, questions, self.old_names
        )
        measured = retention.measure(
            lm, prompts, base_general=None if base is None else base["retention"]["general"]
        )
        write_json({"model": model, "identity": identity, "retention": measured}, out)

    def stage_report(self) -> None:
        from tunesmith.eval import retention
        from tunesmith.eval.report import workflow_markdown, write_json

        base = json.loads(self.paths["base_eval"].read_text())
        tuned = json.loads(self.paths["tuned_eval"].read_text())
        prompts = retention.load_prompts(self.run.prompts)
        compared = retention.compare(
            base["retention"], tuned["retention"], prompts, self.run.name, self.run.author
        )
        before = retention.compare(
            base["retention"], base["retention"], prompts, self.run.name, self.run.author
        )
        merged = str(self.final_model)
        report = {
            "run": self._run_record(),
            "system_prompt": self.run.system_prompt,
            "work_dir": str(self.work_dir),
            "merged_model": merged,
            "adapter": str(self.paths["adapter"]),
            "seconds": {**{s: v["seconds"] for s, v in self.manifest.stages.items()}},
            "identity": {"base": base["identity"], "tuned": tuned["identity"]},
            "retention": compared,
            "base_leakage": before["leakage"],
            "commands": {
                "chat": f"tunesmith chat {shlex.quote(merged)}",
                "webui": f"tunesmith webui {shlex.quote(merged)}",
                "serve": f"tunesmith serve {shlex.quote(merged)}",
            },
        }
        if self.run.preference:
            sft = json.loads(self.paths["sft_eval"].read_text())
            report["sft_only"] = {
                "identity": sft["identity"],
                "retention": retention.compare(
                    base["retention"], sft["retention"], prompts, self.run.name, self.run.author
                ),
            }
        write_json(report, self.work_dir / "report.json")
        markdown = workflow_markdown(report)
        atomic_write_text(self.work_dir / "report.md", markdown)
        print(markdown)
