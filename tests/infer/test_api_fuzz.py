"""Schema fuzzing: schemathesis drives `tunesmith serve` (tiny model, 127.0.0.1) from its own
/openapi.json, valid and invalid requests alike. No answer may be a 5xx, and the server must
still answer afterwards. Bounded: TUNESMITH_FUZZ_EXAMPLES per operation (default 60)."""

import os
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from server_process import KEY, MODEL, ServeProcess, long_context_copy

EXAMPLES = int(os.environ.get("TUNESMITH_FUZZ_EXAMPLES", "60"))
STATUSES: Counter = Counter()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir, tmp_path_factory, free_port):
    """A short context (64) keeps every accepted request's answer short."""
    where = tmp_path_factory.mktemp("fuzz")
    model = long_context_copy(tiny_model_dir, where / "model", context=64)
    process = ServeProcess(model, free_port(), where / "serve.log")
    yield process
    process.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(fuzz_server, mode):
    """Every operation of the served schema, requests that fit it and requests that do not."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/health"}
    auth = {"Authorization": f"Bearer {KEY}"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # GET operations take no input: nothing can be out of schema

        cases = operation.as_strategy(generation_mode=mode, headers=auth)
        if mode is GenerationMode.POSITIVE:  # the served model, so valid requests generate
            cases = cases.map(_served_model)

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def fuzz(case):
            response = case.call(timeout=60)
            STATUSES[response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()


def _served_model(case):
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def test_server_answers_after_fuzzing(fuzz_server):
    assert fuzz_server.process.poll() is None, fuzz_server.log.read_text()[-2000:]
    reply = fuzz_server.ask(max_tokens=4)
    assert reply.status_code == 200 and reply.json()["model"] == MODEL
    assert httpx.get(f"{fuzz_server.url}/health").json()["queued"] == 0
    print(f"fuzz: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}")
    assert not [status for status in STATUSES if status >= 500]
