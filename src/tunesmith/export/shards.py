"""Write a model's tensors as safetensors shards (plus an index when there is more than one).

Tensors are added one at a time and a shard is written as soon as it is full, so
memory holds at most one shard's worth of output. The names follow transformers:
`model.safetensors`, or `model-00001-of-00003.safetensors` + `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tunesmith.errors import UserError
from tunesmith.sizes import size_in_bytes

INDEX = "model.safetensors.index.json"


def parse_size(text: str | int) -> int:
    """`--max-shard-size` in bytes ('2GB' -> 2_000_000_000; units as `tunesmith.sizes`)."""
    try:
        return size_in_bytes(text)
    except ValueError as err:
        raise UserError(f"--max-shard-size {err}") from None


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ShardWriter:
    """Collects tensors and writes them as shards of at most `max_bytes` (a bigger tensor alone)."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir = Path(out_dir)
        self.max_bytes = max_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ValueError(f"tensor {name} written twice")
        size = tensor_bytes(tensor)
        if self._buffer and self._buffer_bytes + size > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor.detach().to("cpu").contiguous()
        self._buffer_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buffer, path, metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write what is left, name the shards, write the index; returns the shard paths."""
        if self._buffer or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            final = self.out_dir / "model.safetensors"
            self._shards[0][0].rename(final)
            return [final]
        weight_map, paths = {}, []
        for number, (path, names) in enumerate(self._shards, start=1):
            final = self.out_dir / f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            paths.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return paths


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model dir, in index order (or sorted)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in dict.fromkeys(weight_map.values())]
    return sorted(model_dir.glob("*.safetensors"))


def iter_tensors(files: list[Path]):
    """(name, tensor) over all files, one tensor in memory at a time."""
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)
