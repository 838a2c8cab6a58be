"""The streamlit web UI in a real headless chromium: ask, see the streamed answer, screenshot."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is absent: install Debian's chromium (scripts/test.sh does)",
    ),
]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the web UI process exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise AssertionError(f"the web UI did not listen on port {port} within {timeout} s")


@pytest.fixture
def webui_url(tiny_model_dir, tmp_path, free_port):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    env["TUNESMITH_CACHE"] = os.environ.get(
        "TUNESMITH_CACHE", str(Path.home() / ".cache/tunesmith")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli.main", "webui", str(tiny_model_dir),
         "--port", str(port), "--device", "cpu", "--system", "You are a test bot."],
        stdout=open(tmp_path / "webui.log", "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def test_webui_streams_an_answer_in_the_browser(webui_url, tmp_path):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(webui_url)
            box = page.get_by_test_id("stChatInputTextArea")
            box.wait_for(timeout=120_000)
            box.fill("Hello, who are you?")
            box.press("Enter")
            messages = page.get_by_test_id("stChatMessage")
            messages.nth(1).wait_for(timeout=120_000)
            answer = messages.nth(1).get_by_test_id("stChatMessageContent")
            page.wait_for_function(
                "el => el.innerText.trim().length > 0", arg=answer.element_handle(), timeout=60_000
            )
            assert "Hello, who are you?" in messages.nth(0).inner_text()
            assert answer.inner_text().strip()
            shot = tmp_path / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # the clear-history button empties the conversation
            page.get_by_role("button", name="Clear chat history").click()
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=stChatMessage]').length === 0",
                timeout=30_000,
            )
        finally:
            browser.close()
