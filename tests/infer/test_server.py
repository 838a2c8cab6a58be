"""The OpenAI-compatible server, driven by the official `openai` client over a real socket."""

import json
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


def _post(base_url, body, key=KEY, scheme="Bearer"):
    return httpx.post(
        f"{base_url}/chat/completions",
        content=body if isinstance(body, bytes) else json.dumps(body),
        headers={"Authorization": f"{scheme} {key}", "Content-Type": "application/json"},
        timeout=60,
    )


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"seed": 2**70}, "seed"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 5e-324}, "repetition_penalty"),
        ({"max_tokens": 10**30}, "max_tokens"),
        ({"max_completion_tokens": 5000}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"stop": 5}, "stop"),
        ({"messages": [{"role": "user", "content": "hi\ud800"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"text": "\udc00"}]}]},
            "messages.0.content.0.text",
        ),
        ({"stop": ["a", "\ud800"]}, "stop.1"),
        ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
        ({"messages": [*HI, {"role": "user", "content": " \n\t"}]}, "messages.1.content"),
        ({"messages": [{"role": "user", "content": [{"text": " "}]}]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"temperature": float("nan")}, "temperature"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content.0.type",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_bad_sampling_value_is_a_400_naming_it_before_anything_streams(
    base_url, extra, param, stream
):
    response = _post(base_url, {"model": MODEL, "messages": HI, "stream": stream, **extra})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "extra,words",
    [
        ({"temperature": float("nan")}, "temperature: Input should be a finite number"),
        ({"top_p": float("inf")}, "top_p: Input should be a finite number"),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": None},
                ]
            },
            "messages.1.content: Value error, content is null",
        ),
    ],
    ids=["temperature-nan", "top-p-inf", "user-content-null"],
)
def test_null_content_and_non_finite_numbers_are_a_400_that_says_so(base_url, extra, words):
    response = _post(base_url, {"model": MODEL, "messages": HI, **extra})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


def test_assistant_message_may_have_null_content(base_url):
    messages = [*HI, {"role": "assistant", "content": None}, {"role": "user", "content": "hi"}]
    response = _post(base_url, {"model": MODEL, "messages": messages, "max_tokens": 2})
    assert response.status_code == 200, response.text


def test_tiny_temperature_and_int64_seed_answer(base_url):
    for extra in ({"temperature": 1e-300}, {"seed": -(2**63)}, {"seed": 2**63 - 1}):
        response = _post(base_url, {"model": MODEL, "messages": HI, "max_tokens": 3, **extra})
        assert response.status_code == 200, (extra, response.text)


@pytest.mark.parametrize("stop", ["Hello", "\nUser:", "x" * 1000, ["Hello there", "\n\n"]])
def test_stop_strings_of_any_length_are_accepted(base_url, stop):
    # a single stop string longer than 4 characters was refused as "at most 4 items"
    response = _post(base_url, {"model": MODEL, "messages": HI, "max_tokens": 3, "stop": stop})
    assert response.status_code == 200, response.text


def test_deeply_nested_body_is_a_400(tiny_generator):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(tiny_generator, model_name=MODEL))
    deep = b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    nested = '{"a": ' * 5000 + '"b"' + "}" * 5000
    deep_field = f'{{"model": "tiny", "messages": {json.dumps(HI)}, "metadata": {nested}}}'
    for body in (deep, deep_field.encode()):
        response = client.post("/v1/chat/completions", content=body)
        assert response.status_code == 400, response.text[:200]
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_auth_scheme_is_case_insensitive(base_url):
    body = {"model": MODEL, "messages": HI, "max_tokens": 2}
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert _post(base_url, body, scheme=scheme).status_code == 200
    assert _post(base_url, body, scheme="Basic").status_code == 401


def test_openapi_describes_request_and_response_bodies(base_url):
    spec = httpx.get(base_url.replace("/v1", "") + "/openapi.json").json()
    post = spec["paths"]["/v1/chat/completions"]["post"]
    request = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = spec["components"]["schemas"]
    assert {"messages", "temperature", "seed", "stream"} <= set(
        schemas[request.rsplit("/", 1)[1]]["properties"]
    )
    response = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert "choices" in schemas[response.rsplit("/", 1)[1]]["properties"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert "400" in post["responses"]


def test_health_answers_without_a_key(base_url):
    response = httpx.get(base_url.replace("/v1", "") + "/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"
