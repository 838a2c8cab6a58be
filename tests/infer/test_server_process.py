"""The real server process (127.0.0.1): abandoned requests free it at once, 8 clients with a
third leaving mid-answer get no errors, SIGTERM stops it in seconds."""

import json
import os
import random
import statistics
import threading
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


def _client(server, index: int, until: float, tally: dict, lock) -> None:
    """Requests back to back; clients 0, 3, 6 (a third) walk away mid-answer every time."""
    rng = random.Random(index)
    leaver = index % 3 == 0
    while time.time() < until:
        stream = rng.random() < 0.5
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Question {rng.randrange(10**6)}?"}],
            "max_tokens": 400 if leaver else rng.randrange(8, 48),
            "temperature": 1,
            "stream": stream,
        }
        url = f"{server.url}/v1/chat/completions"
        start = time.perf_counter()
        try:
            if leaver and stream:
                with httpx.stream("POST", url, json=body, headers=server.headers, timeout=60) as r:
                    lines = r.iter_lines()
                    for _ in range(rng.randrange(2, 6)):
                        next(lines)
                outcome = "left"
            elif leaver:
                try:
                    httpx.post(url, json=body, headers=server.headers, timeout=0.3)
                    outcome = "finished before leaving"
                except httpx.TimeoutException:
                    outcome = "left"
            elif stream:
                with httpx.stream("POST", url, json=body, headers=server.headers, timeout=60) as r:
                    lines = [line for line in r.iter_lines() if line]
                ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
                outcome = "ok" if ok else f"error {r.status_code} {lines[-2:]}"
            else:
                r = httpx.post(url, json=body, headers=server.headers, timeout=60)
                ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"]
                outcome = "ok" if ok else f"error {r.status_code} {r.text[:200]}"
        except Exception as exc:  # a refused or broken connection counts as an error
            outcome = f"error {exc!r}"
        seconds = time.perf_counter() - start
        with lock:
            tally.setdefault(outcome if not outcome.startswith("error") else "error", []).append(
                seconds if not outcome.startswith("error") else outcome
            )


@pytest.mark.slow
def test_eight_clients_a_third_leaving_mid_answer(server):
    """8 clients for TUNESMITH_LOAD_SECONDS (60): the others get every answer whole, /health
    and /v1/models stay fast, the server stays up and its memory flat."""
    seconds = float(os.environ.get("TUNESMITH_LOAD_SECONDS", "60"))
    server.ask(max_tokens=8)
    rss_start = server.rss_mib()
    tally: dict = {}
    lock = threading.Lock()
    until = time.time() + seconds
    threads = [
        threading.Thread(target=_client, args=(server, i, until, tally, lock)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    probes, rss_peak = [], rss_start
    while time.time() < until:
        start = time.perf_counter()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/v1/models", headers=server.headers, timeout=10).is_success
        probes.append(time.perf_counter() - start)
        rss_peak = max(rss_peak, server.rss_mib())
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=120)
    assert server.wait_idle(5.0)
    rss_end = server.rss_mib()
    answered = tally.get("ok", [])
    figures = {
        "seconds": seconds,
        "answered": len(answered),
        "left_mid_answer": len(tally.get("left", [])),
        "finished_before_leaving": len(tally.get("finished before leaving", [])),
        "errors": len(tally.get("error", [])),
        "answer_p50_s": round(statistics.median(answered), 2) if answered else None,
        "answer_max_s": round(max(answered), 2) if answered else None,
        "probe_p50_s": round(statistics.median(probes), 3),
        "probe_max_s": round(max(probes), 3),
        "rss_start_mib": round(rss_start),
        "rss_peak_mib": round(rss_peak),
        "rss_end_mib": round(rss_end),
    }
    print(f"load: {json.dumps(figures)}")
    assert tally.get("error", []) == []
    assert len(answered) >= 8 and figures["left_mid_answer"] >= 3
    # /health + /v1/models, both, never wait for the generation queue: a probe queued behind
    # it would wait at least one whole answer (8 clients keep the queue full). On a shared
    # 2-core CI box their time is otherwise the OS scheduler's (p50 0.44 s beside answers of
    # 0.89 s was seen at load 4), so the bound is one answer, not a fraction of one
    assert statistics.median(probes) < statistics.median(answered) and max(probes) < 5
    assert rss_end - rss_start < 64
    assert server.ask(max_tokens=4).status_code == 200


@pytest.mark.slow
def test_sigterm_stops_the_server_within_seconds_while_it_streams(server):
    """Last in this module: it stops the module's server."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Go on and on."}],
        "max_tokens": LONG,
        "temperature": 1,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers, timeout=30
    ) as response:
        lines = response.iter_lines()
        next(lines)
        seconds = server.stop(timeout=15)
        rest = list(lines)
    assert seconds < 10
    assert not any("[DONE]" in line for line in rest)  # cut short, and said so
    assert any('"error"' in line for line in rest)
