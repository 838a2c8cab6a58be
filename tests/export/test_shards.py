import json

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.errors import UserError
from tunesmith.export.shards import ShardWriter, parse_size, tensor_bytes


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2GB", 2 * 10**9),
        ("500MB", 500 * 10**6),
        ("1GiB", 2**30),
        ("1500 KB", 1500 * 10**3),
        ("8Mb", 10**6),  # megabits, as save_pretrained reads them
        ("123", 123),
    ],
)
def test_parse_size_reads_transformers_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["two gigs", "-1GB", "0", "1.5GB"])
def test_parse_size_rejects_what_is_not_a_size(text):
    with pytest.raises(UserError, match="max-shard-size"):
        parse_size(text)


def test_shards_stay_under_the_limit_and_the_index_maps_every_tensor(tmp_path):
    tensors = {f"t{i}": torch.full((100 + i * 37,), float(i)) for i in range(20)}
    writer = ShardWriter(tmp_path, max_bytes=2000)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()
    assert len(files) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(tensor_bytes(t) for t in tensors.values())
    seen = {}
    for file in files:
        shard = load_file(file)
        assert sum(tensor_bytes(t) for t in shard.values()) <= 2000 or len(shard) == 1
        seen.update(shard)
        assert all(index["weight_map"][name] == file.name for name in shard)
    assert seen.keys() == tensors.keys()
    assert all(torch.equal(seen[k], tensors[k]) for k in tensors)


def test_one_shard_is_model_safetensors_without_index(tmp_path):
    writer = ShardWriter(tmp_path, max_bytes=10**6)
    writer.add("w", torch.ones(3))
    assert [f.name for f in writer.close()] == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
