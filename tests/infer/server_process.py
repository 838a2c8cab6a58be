"""`tunesmith serve` as a real process on 127.0.0.1, for cancellation, load and fuzz tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

KEY = "sk-process"
MODEL = "tiny"


def long_context_copy(model_dir: Path, out: Path, context: int) -> Path:
    """The tiny model with another max_position_embeddings (RoPE takes any length)."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = context
    (out / "config.json").write_text(json.dumps(config))
    return out


class ServeProcess:
    """Start `tunesmith serve MODEL` on a free loopback port; `stop()` sends SIGTERM."""

    def __init__(self, model_dir: Path, port: int, log: Path, api_key: str | None = KEY):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = [
            sys.executable, "-m", "tunesmith.cli.main", "serve", str(model_dir),
            "--port", str(port), "--device", "cpu", "--model-name", MODEL,
        ]  # fmt: skip
        if api_key:
            command += ["--api-key", api_key]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.process = subprocess.Popen(
            command,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, log.read_text()
            assert time.time() < deadline, "tunesmith serve did not come up"
            time.sleep(0.3)

    def ask(self, max_tokens: int = 4, timeout: float = 60, **extra) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": max_tokens,
            **extra,
        }
        return httpx.post(
            f"{self.url}/v1/chat/completions", json=body, headers=self.headers, timeout=timeout
        )

    def queued(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=5).json()["queued"]

    def wait_idle(self, seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.queued() == 0:
                return True
            time.sleep(0.05)
        return False

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return kib / 1024

    def stop(self, timeout: float = 20) -> float:
        """SIGTERM, then seconds until the process is gone (killed after `timeout`)."""
        start = time.perf_counter()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise
        return time.perf_counter() - start
