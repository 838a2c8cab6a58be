"""The OpenAI-compatible server, driven by the official `openai` client over a real socket."""

import threading
import time

import httpx
import openai
import pytest
import uvicorn

from tunesmith.infer.server import create_app
from tunesmith.model.generate import Sampling

KEY = "sk-test-key"
MODEL = "tiny"
ASK = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def base_url(tiny_generator, free_port):
    app = create_app(tiny_generator, model_name=MODEL, api_key=KEY, max_body_bytes=4096)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


def test_non_streaming_completion_answers_with_usage(client, tiny_generator):
    reply = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=8)
    text = reply.choices[0].message.content
    assert text == tiny_generator.generate(ASK, Sampling.greedy(8))
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_completion_streams_the_same_answer(client):
    plain = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=10)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        temperature=0,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces) == plain.choices[0].message.content
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_request_without_the_key_is_refused_with_401(base_url):
    no_key = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        no_key.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    response = httpx.get(f"{base_url}/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "body,status,param",
    [
        (b'{"model": "tiny", "messages": [', 400, None),
        (b'{"model": "other", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}',
            400,
            "max_tokens",
        ),
        (b'{"model": "tiny", "messages": []}', 400, "messages"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}',
            413,
            None,
        ),
    ],
    ids=["bad-json", "unknown-model", "negative-max-tokens", "no-messages", "too-large"],
)
def test_bad_request_gets_openai_error_and_server_keeps_serving(
    base_url, client, body, status, param
):
    response = httpx.post(
        f"{base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param
    after = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3)
    assert after.choices[0].message.content is not None


def test_unknown_model_raises_not_found_in_the_client(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=ASK, max_tokens=2)


def test_serve_command_answers_the_openai_client(tiny_model_dir, tmp_path, free_port):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli.main", "serve", str(tiny_model_dir),
         "--port", str(port), "--device", "cpu", "--api-key", "k1", "--model-name", "mine"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        deadline = time.time() + 120
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.time() < deadline, "tunesmith serve did not come up"
                time.sleep(0.3)
        assert [m.id for m in models.data] == ["mine"]
        reply = client.chat.completions.create(model="mine", messages=ASK, max_tokens=4)
        assert reply.choices[0].message.content
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
