"""Load a config: a built-in recipe name or a YAML file, plus `key=value` overrides.

pydantic checks the keys (every part of the schema forbids unknown ones); its errors become
one line naming the key path, the file and line (or the override), and the nearest valid
key. XTuner's flat knob names (`lr`,
`max_length`, `SYSTEM`, `pretrained_model_name_or_path`, ...) are accepted at the
top level and in overrides and moved into their part (see FLAT_KEYS).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.schema import Config
from tunesmith.errors import UserError
from tunesmith.fileio import read_text

RECIPES_DIR = Path(__file__).parent / "recipes"
CONFIG_SUFFIXES = (".yaml", ".yml", "")

# XTuner's top-level variable names (and a few tunesmith ones) -> where they live.
FLAT_KEYS: dict[str, str] = {
    "pretrained_model_name_or_path": "model.path",
    "model_path": "model.path",
    "torch_dtype": "model.dtype",
    "trust_remote_code": "model.trust_remote_code",
    "use_liger": "model.use_liger",
    "bnb_4bit_quant_type": "quantization.quant_type",
    "bnb_4bit_use_double_quant": "quantization.double_quant",
    "bnb_4bit_compute_dtype": "quantization.compute_dtype",
    "r": "lora.r",
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "target_modules": "lora.target_modules",
    "use_dora": "lora.use_dora",
    "data_files": "data.files",
    "prompt_template": "data.template",
    "template": "data.template",
    "SYSTEM": "data.system",
    "system": "data.system",
    "max_length": "data.max_length",
    "pack_to_max_length": "data.pack_to_max_length",
    "shuffle_before_pack": "data.shuffle_before_pack",
    "batch_size": "train.batch_size",
    "accumulative_counts": "train.accumulative_counts",
    "max_epochs": "train.max_epochs",
    "max_steps": "train.max_steps",
    "lr": "train.lr",
    "betas": "train.betas",
    "weight_decay": "train.weight_decay",
    "max_norm": "train.max_norm",
    "warmup_ratio": "train.warmup_ratio",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "mixed_precision": "train.mixed_precision",
    "seed": "train.seed",
    "deepspeed": "train.deepspeed",
    "work_dir": "runtime.work_dir",
    "save_steps": "runtime.save_steps",
    "save_total_limit": "runtime.save_total_limit",
    "evaluation_freq": "runtime.evaluation_freq",
    "evaluation_inputs": "runtime.evaluation_inputs",
}


# --------------------------------------------------------------------------- YAML


class _AliasRefused(yaml.YAMLError):
    def __init__(self, line: int):
        super().__init__("YAML anchors/aliases are not supported in configs")
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `2e-4` as a float (YAML 1.2), not as a string, and refuses
    aliases (`*a`): a recursive one (`a: &a [*a]`) was a RecursionError, and nested ones
    (a "billion laughs") took minutes and gigabytes; a config has no need for them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and the 1-based line of every mapping key path."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except _AliasRefused as exc:
        raise UserError(f"{source}:{exc.line}: {exc}; write the values out in full") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{line}: not valid YAML ({problem}); fix the file") from None
    lines: dict[tuple, int] = {}
    _key_lines(node, (), lines, source)
    return data, lines


def _key_lines(node, path: tuple, out: dict[tuple, int], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key, line = key_node.value, key_node.start_mark.line + 1
            if path + (key,) in out:  # PyYAML would silently keep the last one
                raise UserError(
                    f"{source}:{line}: '{_dotted(path + (key,))}' is set twice (also on line "
                    f"{out[path + (key,)]}); keep one"
                )
            out[path + (key,)] = line
            _key_lines(value_node, path + (key,), out, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _key_lines(item, path + (i,), out, source)


def parse_value(text: str) -> Any:
    """An override value: YAML (`1e-4`, `true`, `[0.9, 0.95]`, `null`), else the raw string."""
    if text.strip() == "None":  # Python's spelling, as XTuner users write it
        return None
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    # `SYSTEM=Note: be brief` is a sentence, not a mapping
    if isinstance(value, dict | list) and not text.lstrip().startswith(("{", "[")):
        return text
    return text if value is None and text.strip() not in ("null", "~") else value


# --------------------------------------------------------------------- recipes


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no built-in config named '{name}'{_did_you_mean(name, list_recipes())}")
    return path


def config_name(name_or_path: str) -> str:
    """The name a run is known by: the recipe name, or the YAML file's stem."""
    return Path(name_or_path).stem if _looks_like_path(name_or_path) else name_or_path


def _looks_like_path(name_or_path: str) -> bool:
    return (
        name_or_path.endswith((".yaml", ".yml"))
        or "/" in name_or_path
        or Path(name_or_path).is_file()
    )


def _did_you_mean(word: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not close:
        close = [c for c in choices if word.lower() in c.lower()][:n]
    if close:
        return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return ""


# ----------------------------------------------------------------- the schema


def _model_class(annotation) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_class(arg)
            if found is not None:
                return found
    return None


def _is_list_field(annotation) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def _keys_of(model: type[BaseModel]) -> dict[str, str]:
    """Valid keys of a part -> the field name they set (names and XTuner aliases)."""
    keys = {}
    for name, field in model.model_fields.items():
        keys[name] = name
        if field.alias:
            keys[field.alias] = name
    return keys


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key path the schema accepts (field names, not aliases)."""
    out = []
    for name, field in model.model_fields.items():
        sub = _model_class(field.annotation)
        if sub is not None and not _is_list_field(field.annotation):
            out += valid_keys(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


# ------------------------------------------------------------- where keys came from


class _Source:
    """Where values came from (file lines, command-line overrides), for error messages."""

    def __init__(self, file: str, lines: dict[tuple, int] | None = None):
        self.file, self.lines = file, lines or {}
        self.overrides: dict[tuple, str] = {}

    def line(self, path: tuple) -> float:
        """The file line `path` was set on (an override: after every line)."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return float("inf")

    def at(self, path: tuple) -> str:
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.overrides:
                return f"override '{self.overrides[path[:cut]]}'"
        for key, override in self.overrides.items():  # a part the override itself created
            if path and key[: len(path)] == path:
                return f"override '{override}'"
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.lines:
                return f"{self.file}:{self.lines[path[:cut]]}"
        return self.file


def _dotted(path: tuple) -> str:
    """('data', 'files', 0, 'path') -> 'data.files[0].path'"""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _part_at(path: tuple) -> type[BaseModel]:
    """The schema part that holds the last key of `path` (list indices skipped)."""
    model: type[BaseModel] = Config
    for key in path[:-1]:
        if isinstance(key, int):
            continue
        name = _keys_of(model).get(key)
        sub = _model_class(model.model_fields[name].annotation) if name else None
        if sub is None:
            break
        model = sub
    return model


def _key_hint(key: str, model: type[BaseModel], path: tuple) -> str:
    """'; did you mean ...?' with the nearest key of this part, or where the key lives."""
    elsewhere = [k for k in valid_keys() if k.endswith("." + key)]
    if key in FLAT_KEYS and FLAT_KEYS[key] not in elsewhere:
        elsewhere.append(FLAT_KEYS[key])
    if elsewhere:
        return "; it belongs in " + " or ".join(f"'{k}'" for k in elsewhere)
    choices = list(_keys_of(model)) + (list(FLAT_KEYS) if not path else [])
    return _did_you_mean(key, choices)


def _move_flat_keys(data: dict, source: _Source) -> dict:
    """Move XTuner's flat top-level names into their parts (pydantic reports any other key)."""
    parts = _keys_of(Config)
    out = {k: v for k, v in data.items() if k in parts or k not in FLAT_KEYS}
    for key, value in data.items():
        if key in out:
            continue
        part, field = FLAT_KEYS[key].split(".")
        section = out.get(part)
        if section is None:
            section = out[part] = {}
        if not isinstance(section, dict):
            raise UserError(f"{source.at((part,))}: '{part}' must be a mapping to hold '{key}'")
        if field in section and section[field] != value:
            raise UserError(
                f"{source.at((key,))}: '{key}' and '{part}.{field}' are both set, to different "
                f"values; keep one"
            )
        out[part] = {**section, field: value}
    return out


# ------------------------------------------------------------------ overrides


def _apply_override(data: dict, override: str) -> tuple[dict, tuple]:
    """One `key.sub=value` override applied to a raw config dict: the new dict, the key path."""
    if "=" not in override:
        raise UserError(f"override '{override}' is not key=value (e.g. train.lr=1e-4)")
    key, text = override.split("=", 1)
    path = key.strip().removeprefix("--").split(".")
    if not path[0]:
        raise UserError(f"override '{override}' has no key before '='")
    if len(path) == 1 and path[0] in FLAT_KEYS:
        path = FLAT_KEYS[path[0]].split(".")
    value = parse_value(text)
    out = dict(data)
    node = out
    for part in path[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[path[-1]] = value
    return out, tuple(path)


# --------------------------------------------------------------- validation


UNKNOWN_KEY = ("extra_forbidden", "invalid_key")  # pydantic's error types for a key


def _validate(data: dict, source: _Source) -> Config:
    """Config.model_validate, its first error (an unknown key before a bad value, then in
    file order) as one UserError naming the file:line or override and the key path."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        unknown = [e for e in errors if e["type"] in UNKNOWN_KEY]
        if unknown:
            err = min(unknown, key=lambda e: source.line(tuple(e["loc"])))
        else:
            err = errors[0]
        loc = tuple(err["loc"])
        more = len(errors) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise UserError(f"{source.at(loc)}: {_problem(err, loc)}{tail}") from None


def _problem(err: dict, loc: tuple) -> str:
    key = loc[-1]
    # a key that is not a string (`1: 2`) is named as written, not as a list index
    dotted = _dotted(loc) if isinstance(key, str) else _dotted(loc[:-1] + (str(key),))
    if err["type"] in UNKNOWN_KEY:
        model = _part_at(loc)
        field = _keys_of(model).get(key) if isinstance(key, str) else None
        if field is not None:  # pydantic takes a field by its name or its alias, not both
            names = [k for k, v in _keys_of(model).items() if v == field]
            both = " and ".join(f"'{_dotted(loc[:-1] + (k,))}'" for k in names)
            return f"{both} are both set (the same field); keep one"
        return f"unknown config key '{dotted}'{_key_hint(str(key), model, loc[:-1])}"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    return f"bad value {shown} for '{dotted}': {err['msg']}"


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A built-in recipe name or a YAML path, with `key.sub=value` overrides applied."""
    path = _find_config(name_or_path)
    data, lines = _parse_yaml(read_text(path, "config"), str(path))
    source = _Source(str(path), lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config is a mapping of parts (model:, data:, train:, ...)")
    return _validate(_with_overrides(_move_flat_keys(data, source), overrides, source), source)


def _with_overrides(data: dict, overrides, source: _Source) -> dict:
    for override in overrides:
        data, key = _apply_override(data, override)
        source.overrides[key] = override
    return data


def _find_config(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".py":
        yaml_name = path.with_suffix(".yaml").name
        raise UserError(
            f"{path} is a Python (XTuner) config; convert it once with "
            f"`tunesmith convert-cfg {path} {yaml_name}` and use {yaml_name}"
        )
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a config file; give a .yaml file")
    if path.is_file():
        if path.suffix.lower() not in CONFIG_SUFFIXES:
            raise UserError(
                f"{path}: a config is a YAML file (.yaml / .yml), not a {path.suffix or 'file'} "
                f"file; data files go in data.files"
            )
        return path
    if _looks_like_path(name_or_path):
        raise UserError(f"config file {name_or_path} does not exist")
    return recipe_path(name_or_path)


def load_config_dict(
    data: dict, source: str = "<config>", overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Validate a raw config dict (flat XTuner names allowed), with `key.sub=value` overrides
    applied, with the same error messages as load_config."""
    src = _Source(source)
    return _validate(_with_overrides(_move_flat_keys(data, src), overrides, src), src)


class _Dumper(yaml.SafeDumper):
    """Writes strings that hold newlines as one double-quoted line (`"...\\n"`)."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_config(cfg: Config) -> str:
    """The config as YAML, every part and field spelled out, in schema order."""
    data = cfg.model_dump(mode="json", by_alias=False)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
