"""Read an XTuner Python config without running it and map it to a tunesmith config.

The file is parsed with `ast` and never imported or executed. Top-level
assignments are evaluated in order as far as plain data goes: literals, names
bound earlier, arithmetic, `dict(...)`, and calls with keyword arguments, which
become `{"type": <callee>, **kwargs}` like mmengine's lazy configs. Imported
names become `Ref("module.name")` so `torch.float16` or `PROMPT_TEMPLATE.internlm2_chat`
can be recognised by name. Anything else evaluates to `Unknown`.

`convert_xtuner_config(path)` returns the tunesmith config dict and one note per
setting that could not be carried over.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.loader import FLAT_KEYS
from tunesmith.errors import UserError
from tunesmith.fileio import read_text


@dataclass(frozen=True)
class Ref:
    """A name from an import (`torch.float16`, `xtuner.utils.PROMPT_TEMPLATE.qwen_chat`)."""

    name: str

    @property
    def last(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Unknown:
    """A value the reader does not evaluate (a function call result, a comprehension, ...)."""

    line: int
    text: str


# XTuner's SYSTEM_TEMPLATE texts (xtuner/utils/templates.py), so `SYSTEM = SYSTEM_TEMPLATE.alpaca`
# carries the actual prompt.
SYSTEM_TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n"
    ),
    "arxiv_gentile": (
        "If you are an expert in writing papers, please generate a good paper title for this "
        "paper based on other authors' descriptions of their abstracts.\n"
    ),
    "colorist": (
        "You are a professional color designer. Please provide the corresponding colors based "
        "on the description of Human.\n"
    ),
    "coder": (
        "You are a professional programer. Please provide the corresponding code based on the "
        "description of Human.\n"
    ),
    "lawyer": "你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n",
    "medical": "如果你是一名医生，请根据患者的描述回答医学问题。\n",
    "sql": (
        "If you are an expert in SQL, please generate a good SQL Query for Question based on "
        "the CREATE TABLE statement.\n"
    ),
}

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


# --------------------------------------------------------------- evaluation


@dataclass
class ParsedConfig:
    names: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # name -> line of its assignment
    skipped: list[str] = field(default_factory=list)  # statements that were not evaluated


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.out = ParsedConfig()

    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        env = self.out.names
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                env[alias.asname or alias.name.split(".")[0]] = Ref(
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(stmt, ast.ImportFrom):
            module = "." * stmt.level + (stmt.module or "")
            for alias in stmt.names:
                if alias.name == "*":
                    self.out.skipped.append(
                        f"line {stmt.lineno}: `from {module} import *` (base configs) is not "
                        f"followed; convert that file and merge by hand"
                    )
                    continue
                env[alias.asname or alias.name] = Ref(f"{module}.{alias.name}")
        elif isinstance(stmt, ast.Assign):
            value = self.expr(stmt.value)
            for target in stmt.targets:
                self.bind(target, value, stmt.lineno)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            self.bind(stmt.target, self.expr(stmt.value), stmt.lineno)
        elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            current = env.get(stmt.target.id, Unknown(stmt.lineno, stmt.target.id))
            value = self.binop(stmt.op, current, self.expr(stmt.value), stmt)
            self.bind(stmt.target, value, stmt.lineno)
        elif isinstance(stmt, ast.If):
            test = self.expr(stmt.test)
            if isinstance(test, Unknown | Ref):
                self.out.skipped.append(
                    f"line {stmt.lineno}: `if {self.text(stmt.test)}:` could not be decided "
                    f"without running the file; its body was not read"
                )
            else:
                self.run(stmt.body if test else stmt.orelse)
        elif isinstance(stmt, ast.With) and any(
            "read_base" in self.text(item.context_expr) for item in stmt.items
        ):
            self.out.skipped.append(
                f"line {stmt.lineno}: base configs (read_base) are not followed; convert that "
                f"file and merge by hand"
            )
        elif not isinstance(stmt, ast.Expr | ast.Pass):
            self.out.skipped.append(
                f"line {stmt.lineno}: `{self.text(stmt).splitlines()[0]}` was not run "
                f"(configs are read, never executed)"
            )

    def bind(self, target: ast.expr, value: Any, line: int) -> None:
        if isinstance(target, ast.Name):
            self.out.names[target.id] = value
            self.out.lines[target.id] = line
        elif isinstance(target, ast.Tuple | ast.List) and isinstance(value, tuple | list):
            if len(value) == len(target.elts):
                for t, v in zip(target.elts, value, strict=True):
                    self.bind(t, v, line)

    def text(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.dump(node)

    def expr(self, node: ast.expr) -> Any:
        unknown = Unknown(getattr(node, "lineno", 0), self.text(node))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.out.names.get(node.id, unknown)
        if isinstance(node, ast.Attribute):
            base = self.expr(node.value)
            if isinstance(base, Ref):
                return Ref(f"{base.name}.{node.attr}")
            if isinstance(base, dict) and node.attr in base:
                return base[node.attr]
            return unknown
        if isinstance(node, ast.Tuple):
            return tuple(self.expr(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [self.expr(e) for e in node.elts]
        if isinstance(node, ast.Set):
            return {self.expr(e) for e in node.elts}
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):  # {**other}
                return unknown
            return {self.expr(k): self.expr(v) for k, v in zip(node.keys, node.values, strict=True)}
        if isinstance(node, ast.BinOp):
            return self.binop(node.op, self.expr(node.left), self.expr(node.right), node)
        if isinstance(node, ast.UnaryOp):
            value = self.expr(node.operand)
            if isinstance(value, Unknown | Ref):
                return unknown
            ops = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
            return ops[type(node.op)](value) if type(node.op) in ops else unknown
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.expr(node.left), self.expr(node.comparators[0])
            op = _COMPARE.get(type(node.ops[0]))
            if op is None or any(isinstance(v, Unknown | Ref) for v in (left, right)):
                return unknown
            try:
                return op(left, right)
            except TypeError:
                return unknown
        if isinstance(node, ast.BoolOp):
            values = [self.expr(v) for v in node.values]
            if any(isinstance(v, Unknown | Ref) for v in values):
                return unknown
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.IfExp):
            test = self.expr(node.test)
            if isinstance(test, Unknown | Ref):
                return unknown
            return self.expr(node.body if test else node.orelse)
        if isinstance(node, ast.Call):
            return self.call(node, unknown)
        return unknown

    def call(self, node: ast.Call, unknown: Unknown) -> Any:
        func = self.expr(node.func)
        if any(kw.arg is None for kw in node.keywords):  # f(**kwargs)
            return unknown
        kwargs = {kw.arg: self.expr(kw.value) for kw in node.keywords}
        if isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
            return kwargs
        if isinstance(node.func, ast.Name) and node.func.id in ("list", "tuple") and node.args:
            inner = self.expr(node.args[0])
            if isinstance(inner, list | tuple):
                return list(inner) if node.func.id == "list" else tuple(inner)
            return unknown
        if isinstance(func, Ref) and not node.args:
            return {"type": func, **kwargs}
        return unknown

    def binop(self, op: ast.operator, left: Any, right: Any, node: ast.AST) -> Any:
        fn = _BINOPS.get(type(op))
        if fn is None or any(isinstance(v, Unknown | Ref) for v in (left, right)):
            return Unknown(getattr(node, "lineno", 0), self.text(node))
        try:
            return fn(left, right)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return Unknown(getattr(node, "lineno", 0), self.text(node))


def read_xtuner_config(path: str | Path) -> ParsedConfig:
    """Parse an XTuner .py config into its evaluated top-level names (never runs it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"XTuner config {path} does not exist")
    source = read_text(path, "XTuner config")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    reader = _Reader(source)
    reader.run(tree.body)
    return reader.out


# ------------------------------------------------------------------ mapping

_DTYPES = {
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "float": "fp32",
    "auto": "auto",
}
_MAP_FNS = {  # XTuner dataset_map_fn -> the record format tunesmith reads natively
    "alpaca_map_fn": "alpaca",
    "alpaca_zh_map_fn": "alpaca",
    "openai_map_fn": "messages",
}
_FILE_LOADERS = {"json", "csv", "parquet", "text"}

# Settings that only wire XTuner's own machinery and have no effect on what is trained.
_PLUMBING = {
    "tokenizer", "sampler", "dataloader_num_workers", "optim_type", "env_cfg", "visualizer",
    "log_level", "log_processor", "default_hooks", "custom_hooks", "param_scheduler",
    "train_cfg", "model", "optim_wrapper", "train_dataloader", "use_varlen_attn",
    "sequence_parallel_size", "randomness", "load_from", "resume",
}  # fmt: skip


class _Mapper:
    """Pulls each tunesmith setting from where XTuner keeps it, noting what cannot come across."""

    def __init__(self, parsed: ParsedConfig):
        self.names = parsed.names
        self.lines = parsed.lines
        self.notes: list[str] = list(parsed.skipped)
        self.used: set[str] = set()

    def note(self, name: str | None, text: str) -> None:
        where = f"line {self.lines[name]}: " if name in self.lines else ""
        self.notes.append(f"{where}{text}")

    def var(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.names.get(name, default)

    def known(self, value: Any, what: str) -> bool:
        """False (and a note) when a value could not be evaluated."""
        if isinstance(value, Unknown):
            self.notes.append(
                f"line {value.line}: {what} = `{value.text}` could not be evaluated without "
                f"running the file; set it by hand"
            )
            return False
        return value is not None

    # -- the parts, in config order

    def model(self) -> tuple[dict, dict | None, dict | None]:
        model_cfg = _dict(self.var("model"))
        llm = _dict(model_cfg.get("llm"))
        out: dict[str, Any] = {}
        path = llm.get("pretrained_model_name_or_path", self.var("pretrained_model_name_or_path"))
        if self.known(path, "pretrained_model_name_or_path"):
            out["path"] = path
        dtype = llm.get("torch_dtype")
        if dtype is not None and self.known(dtype, "torch_dtype"):
            name = dtype.last if isinstance(dtype, Ref) else str(dtype)
            if name in _DTYPES:
                out["dtype"] = _DTYPES[name]
            else:
                self.note("model", f"torch_dtype {name} is not one tunesmith knows; left on auto")
        if llm.get("trust_remote_code") is True:
            self.note(
                "model",
                "trust_remote_code=True left off: tunesmith loads InternLM2, Qwen and Llama "
                "natively; set model.trust_remote_code: true only if your model needs its own "
                "code",
            )
        attn = llm.get("attn_implementation")
        if isinstance(attn, str):
            out["attn_implementation"] = attn
        quant = self.quantization(llm.get("quantization_config"))
        lora = self.lora(model_cfg.get("lora"))
        if lora is None and quant:
            self.note("model", "4-bit quantization without LoRA cannot train; quantization dropped")
            quant = None
        return out, quant, lora

    def quantization(self, q: Any) -> dict | None:
        if not isinstance(q, dict):
            return None
        if q.get("load_in_4bit"):
            out: dict[str, Any] = {"bits": 4}
        elif q.get("load_in_8bit"):
            out = {"bits": 8}
        else:
            return None
        if q.get("bnb_4bit_quant_type") in ("nf4", "fp4"):
            out["quant_type"] = q["bnb_4bit_quant_type"]
        if isinstance(q.get("bnb_4bit_use_double_quant"), bool):
            out["double_quant"] = q["bnb_4bit_use_double_quant"]
        compute = q.get("bnb_4bit_compute_dtype")
        if isinstance(compute, Ref) and compute.last in _DTYPES:
            out["compute_dtype"] = _DTYPES[compute.last]
        if q.get("llm_int8_threshold", 6.0) != 6.0:
            self.note("model", "llm_int8_threshold is not carried over (tunesmith uses 6.0)")
        return out

    def lora(self, cfg: Any) -> dict | None:
        if not isinstance(cfg, dict):
            return None
        out: dict[str, Any] = {}
        for src, dst in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                         ("bias", "bias"), ("use_dora", "use_dora")):  # fmt: skip
            if src in cfg and self.known(cfg[src], f"lora.{src}"):
                out[dst] = cfg[src]
        targets = cfg.get("target_modules")
        if targets is not None and self.known(targets, "lora.target_modules"):
            out["target_modules"] = list(targets) if isinstance(targets, list | tuple) else targets
        else:
            out["target_modules"] = "all-linear"  # XTuner's default: every linear layer
        for key in ("modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"):
            if cfg.get(key) is not None:
                self.note("model", f"lora.{key} is not carried over (tunesmith has no such option)")
        return out

    def data(self) -> dict:
        loader = _dict(self.var("train_dataloader"))
        datasets = self._datasets(loader.get("dataset"))
        out: dict[str, Any] = {"files": []}
        template = None
        for ds in datasets:
            out["files"] += self._files(ds)
            if isinstance(ds.get("template_map_fn"), dict):
                template = ds["template_map_fn"].get("template", template)
            for key in ("max_length", "pack_to_max_length", "shuffle_before_pack"):
                if key in ds and self.known(ds[key], key):
                    out[key] = ds[key]
        template = template if template is not None else self.var("prompt_template")
        if isinstance(template, Ref):
            out["template"] = self._template(template.last)
        elif template is not None and not isinstance(template, Unknown):
            self.note(
                "prompt_template",
                "prompt_template is not a PROMPT_TEMPLATE name; set data.template",
            )
        for key in ("max_length", "pack_to_max_length"):
            if key not in out and self.known(self.var(key), key):
                out[key] = self.var(key)
        system = self._system()
        if system is not None:
            out["system"] = system
            self.note(
                "SYSTEM",
                "SYSTEM became data.system, which tunesmith also gives to training records "
                "that have no system prompt (XTuner used it for chat samples only); set "
                "data.system: null to train those records without one",
            )
        sampler = loader.get("sampler")
        if isinstance(sampler, dict) and isinstance(sampler.get("shuffle"), bool):
            out["shuffle"] = sampler["shuffle"]
        return out

    def _template(self, name: str) -> str:
        from tunesmith.config.schema import TEMPLATE_NAMES

        if name in TEMPLATE_NAMES:
            return name
        self.note(
            "prompt_template",
            f"template {name} is not built into tunesmith; data.template set to auto (the "
            f"tokenizer's own chat template); or pick one of {', '.join(TEMPLATE_NAMES[1:])}",
        )
        return "auto"

    def _datasets(self, dataset: Any) -> list[dict]:
        if not isinstance(dataset, dict):
            if dataset is not None:
                self.known(dataset, "train_dataloader.dataset")
            return []
        if isinstance(dataset.get("datasets"), list | tuple):  # ConcatDataset
            return [d for d in dataset["datasets"] if isinstance(d, dict)]
        return [dataset]

    def _files(self, ds: dict) -> list[dict]:
        inner = ds.get("dataset")
        if not isinstance(inner, dict):
            self.note(
                "train_dataloader", "the training data source could not be read; set data.files"
            )
            return []
        loader_name = inner.get("path")
        data_files = inner.get("data_files")
        files: list[Any] = []
        if isinstance(data_files, dict):
            for split, value in data_files.items():
                if split != "train":
                    self.note(None, f"data split '{split}' is not carried over (only train is)")
                    continue
                files += value if isinstance(value, list | tuple) else [value]
        elif isinstance(data_files, list | tuple):
            files = list(data_files)
        elif data_files is not None:
            files = [data_files]
        if loader_name not in _FILE_LOADERS:
            if isinstance(loader_name, str):
                self.note(
                    None,
                    f"dataset '{loader_name}' is a Hugging Face hub dataset; tunesmith never "
                    f"downloads: save it as .jsonl/.json/.parquet and set data.files",
                )
                files = files or [loader_name]
            else:
                self.known(loader_name, "dataset path")
        fmt = self._format(ds.get("dataset_map_fn"))
        out = []
        for f in files:
            if self.known(f, "data file"):
                out.append({"path": str(f), "format": fmt})
        return out

    def _format(self, map_fn: Any) -> str:
        if map_fn is None:
            return "conversation"  # XTuner reads records already in its conversation format
        name = map_fn.last if isinstance(map_fn, Ref) else None
        if name in _MAP_FNS:
            return _MAP_FNS[name]
        shown = name or getattr(map_fn, "text", str(map_fn))
        self.note(
            None,
            f"dataset_map_fn {shown} is not carried over; data.files format left on auto "
            f"(convert the records to conversation, messages, alpaca or sharegpt)",
        )
        return "auto"

    def _system(self) -> str | None:
        system = self.var("SYSTEM")
        for hook in self._hooks():
            if hook.get("type") and _name(hook["type"]) == "EvaluateChatHook":
                system = hook.get("system", system)
        if isinstance(system, Ref):
            key = system.last
            if "SYSTEM_TEMPLATE" in system.name and key in SYSTEM_TEMPLATES:
                return SYSTEM_TEMPLATES[key]
            self.note(
                "SYSTEM", f"SYSTEM = {system.name} is not a known SYSTEM_TEMPLATE; set data.system"
            )
            return None
        if isinstance(system, str):
            return system or None
        self.known(system, "SYSTEM")
        return None

    def _hooks(self) -> list[dict]:
        hooks = self.var("custom_hooks", []) or []
        return [h for h in hooks if isinstance(h, dict)] if isinstance(hooks, list) else []

    def train(self) -> dict:
        out: dict[str, Any] = {}
        loader = _dict(self.var("train_dataloader"))
        wrapper = _dict(self.var("optim_wrapper"))
        optimizer = _dict(wrapper.get("optimizer"))
        train_cfg = _dict(self.var("train_cfg"))
        candidates = {
            "batch_size": loader.get("batch_size"),
            "accumulative_counts": wrapper.get("accumulative_counts"),
            "max_epochs": train_cfg.get("max_epochs"),
            "lr": optimizer.get("lr"),
            "betas": optimizer.get("betas"),
            "weight_decay": optimizer.get("weight_decay"),
            "max_norm": _dict(wrapper.get("clip_grad")).get("max_norm"),
            "warmup_ratio": None,
        }
        for key, value in candidates.items():
            value = value if value is not None else self.var(key)
            if self.known(value, key):
                out[key] = list(value) if isinstance(value, tuple) else value
        if "warmup_ratio" not in out:
            ratio = self._warmup_from_schedule(out.get("max_epochs"))
            if ratio is not None:
                out["warmup_ratio"] = ratio
        max_iters = train_cfg.get("max_iters")
        if isinstance(max_iters, int):
            out["max_steps"] = max_iters
        opt_type = optimizer.get("type")
        if opt_type is not None and _name(opt_type) != "AdamW":
            self.note(
                "optim_wrapper",
                f"optimizer {_name(opt_type)} is not carried over: tunesmith trains with AdamW",
            )
        precision = self._precision(wrapper)
        if precision:
            out["mixed_precision"] = precision
        model_cfg = self.names.get("model", {})
        if isinstance(model_cfg, dict):
            # XTuner's SupervisedFinetune turns activation checkpointing on unless told not to
            out["gradient_checkpointing"] = (
                model_cfg.get("use_activation_checkpointing", True) is not False
            )
        randomness = _dict(self.var("randomness"))
        if isinstance(randomness.get("seed"), int):
            out["seed"] = randomness["seed"]
        self._schedule()
        return out

    def _precision(self, wrapper: Any) -> str | None:
        if not isinstance(wrapper, dict):
            return None
        kind = _name(wrapper.get("type"))
        if kind == "AmpOptimWrapper":
            dtype = wrapper.get("dtype", "float16")
            return {"float16": "fp16", "bfloat16": "bf16"}.get(str(dtype), "auto")
        if kind == "OptimWrapper":
            return "no"
        return None

    def _schedulers(self) -> list[dict]:
        schedulers = self.var("param_scheduler", []) or []
        if isinstance(schedulers, dict):
            schedulers = [schedulers]
        return (
            [s for s in schedulers if isinstance(s, dict)] if isinstance(schedulers, list) else []
        )

    def _warmup_from_schedule(self, max_epochs: Any) -> float | None:
        """XTuner's warmup is a LinearLR ending at warmup_ratio * max_epochs (by epoch)."""
        for s in self._schedulers():
            end = s.get("end")
            if _name(s.get("type")) != "LinearLR" or not isinstance(end, int | float):
                continue
            if s.get("by_epoch", True) and isinstance(max_epochs, int | float) and max_epochs > 0:
                # the variable it came from (warmup_ratio, warm_up_ratio, ...) is now carried
                self.used.update(n for n in self.names if "warm" in n.lower())
                return end / max_epochs
            self.note(
                "param_scheduler", "the warmup length could not be read; set train.warmup_ratio"
            )
        return None

    def _schedule(self) -> None:
        schedulers = self._schedulers()
        kinds = [_name(s.get("type")) for s in schedulers if isinstance(s, dict)]
        if kinds and kinds != ["LinearLR", "CosineAnnealingLR"]:
            self.note(
                "param_scheduler",
                f"param_scheduler {' + '.join(kinds)} is not carried over: tunesmith uses "
                f"linear warmup (train.warmup_ratio) then cosine decay",
            )
        for s in schedulers:
            if isinstance(s, dict) and _name(s.get("type")) == "CosineAnnealingLR":
                eta_min = s.get("eta_min", 0.0)
                if isinstance(eta_min, int | float) and eta_min != 0:
                    self.note(
                        "param_scheduler",
                        f"eta_min={eta_min} is not carried over (tunesmith decays to 0)",
                    )

    def runtime(self) -> dict:
        out: dict[str, Any] = {}
        hooks = _dict(self.var("default_hooks"))
        checkpoint = _dict(hooks.get("checkpoint"))
        logger = _dict(hooks.get("logger"))
        chat_hook = next(
            (h for h in self._hooks() if _name(h.get("type")) == "EvaluateChatHook"), {}
        )
        candidates = {
            "save_steps": checkpoint.get("interval"),
            "save_total_limit": checkpoint.get("max_keep_ckpts"),
            "evaluation_freq": chat_hook.get("every_n_iters"),
            "evaluation_inputs": chat_hook.get("evaluation_inputs"),
        }
        for key, value in candidates.items():
            value = value if value is not None else self.var(key)
            if self.known(value, key):
                out[key] = list(value) if isinstance(value, tuple) else value
        if isinstance(logger.get("interval"), int):
            out["logging_steps"] = logger["interval"]
        if isinstance(chat_hook.get("max_new_tokens"), int):
            out["evaluation_max_new_tokens"] = chat_hook["max_new_tokens"]
        vis = self.var("visualizer")
        if isinstance(vis, dict) and isinstance(vis.get("vis_backends"), list):
            out["tensorboard"] = any(
                _name(b.get("type")) == "TensorboardVisBackend"
                for b in vis["vis_backends"]
                if isinstance(b, dict)
            )
        return out

    def leftovers(self) -> None:
        """A note for each evaluated setting with an effect tunesmith cannot reproduce."""
        if self.names.get("use_varlen_attn") is False and self.names.get("pack_to_max_length"):
            self.note(
                "use_varlen_attn",
                "use_varlen_attn=False: tunesmith always keeps attention inside each packed "
                "sample (what use_varlen_attn=True does), so packed samples never see each other",
            )
        sp = self.names.get("sequence_parallel_size")
        if isinstance(sp, int) and sp > 1:
            self.note(
                "sequence_parallel_size", f"sequence_parallel_size={sp} is not supported; dropped"
            )
        for name in ("load_from", "resume"):
            if self.names.get(name) not in (None, False):
                self.note(name, f"{name} is not carried over: pass --resume to `tunesmith train`")
        for name, value in self.names.items():
            if (
                name in self.used
                or name in _PLUMBING
                or name in FLAT_KEYS
                or isinstance(value, Ref)
            ):
                continue
            if name.startswith("_") or name.endswith(("_path", "_dataset")) or name == "alpaca_en":
                continue
            if isinstance(value, dict) and "type" in value:
                continue  # a component built from the settings above
            self.note(name, f"`{name}` is not carried over (tunesmith has no such setting)")


def _name(value: Any) -> str | None:
    """The class or function name of a `type=` value (an imported name or a string)."""
    if isinstance(value, Ref):
        return value.last
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def convert_xtuner_config(path: str | Path) -> tuple[dict, list[str]]:
    """The tunesmith config dict for an XTuner config, and one note per setting not carried over."""
    path = Path(path)
    mapper = _Mapper(read_xtuner_config(path))
    model, quant, lora = mapper.model()
    config = {
        "model": model,
        "quantization": quant,
        "lora": lora,
        "data": mapper.data(),
        "train": mapper.train(),
        "runtime": mapper.runtime(),
    }
    mapper.leftovers()
    return config, sorted(mapper.notes, key=_line_of)


def _line_of(note: str) -> int:
    head = note.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 1 << 30
