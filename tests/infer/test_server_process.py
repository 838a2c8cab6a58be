"""The real server process: abandoned requests free it at once, SIGTERM stops it in seconds."""

import time

import httpx
import pytest
from server_process import MODEL, ServeProcess, long_context_copy

LONG = 6000  # tokens: tens of seconds on this model, so a leftover generation shows


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, free_port):
    where = tmp_path_factory.mktemp("serve")
    model = long_context_copy(tiny_model_dir, where / "model", context=8192)
    process = ServeProcess(model, free_port(), where / "serve.log")
    yield process
    process.stop()


def _normal_time(server) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        assert server.ask(max_tokens=5).status_code == 200
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.slow
def test_abandoned_requests_free_the_server_at_once(server):
    normal = _normal_time(server)
    # A long plain request whose client gives up after 1 s.
    with pytest.raises(httpx.ReadTimeout):
        server.ask(max_tokens=LONG, timeout=1, temperature=1)
    assert server.wait_idle(2.0), "the abandoned plain request kept generating"
    start = time.perf_counter()
    assert server.ask(max_tokens=5).status_code == 200
    assert time.perf_counter() - start < normal + 1.0

    # A long stream the client closes after a few chunks.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": LONG,
        "temperature": 1,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers, timeout=30
    ) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    assert server.wait_idle(2.0), "the abandoned stream kept generating"
    start = time.perf_counter()
    assert server.ask(max_tokens=5).status_code == 200
    assert time.perf_counter() - start < normal + 1.0


@pytest.mark.slow
def test_sigterm_stops_the_server_within_seconds_while_it_streams(
    tiny_model_dir, tmp_path, free_port
):
    model = long_context_copy(tiny_model_dir, tmp_path / "model", context=8192)
    process = ServeProcess(model, free_port(), tmp_path / "serve.log")
    try:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Go on and on."}],
            "max_tokens": LONG,
            "temperature": 1,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{process.url}/v1/chat/completions",
            json=body,
            headers=process.headers,
            timeout=30,
        ) as response:
            lines = response.iter_lines()
            next(lines)
            seconds = process.stop(timeout=15)
            rest = list(lines)
    finally:
        if process.process.poll() is None:
            process.stop()
    assert seconds < 10
    assert not any("[DONE]" in line for line in rest)  # cut short, and said so
    assert any('"error"' in line for line in rest)
