"""The streamlit web UI in a real headless chromium: ask, see the streamed answer, screenshot;
a tab closed mid-answer frees the model for the next one."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from server_process import long_context_copy

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


def _start_webui(model_dir: Path, tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)}
    env["TUNESMITH_CACHE"] = os.environ.get(
        "TUNESMITH_CACHE", str(Path.home() / ".cache/tunesmith")
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli.main", "webui", str(model_dir),
         "--port", str(port), "--device", "cpu", "--system", "You are a test bot."],
        stdout=open(tmp_path / "webui.log", "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # fmt: skip


@pytest.fixture
def webui(tiny_model_dir, tmp_path, free_port):
    """(url, process) of `tunesmith webui` on the tiny model with an 8k context (RoPE takes any
    length), so the longest answer the UI allows (2,048 tokens) fits."""
    model = long_context_copy(tiny_model_dir, tmp_path / "model", context=8192)
    port = free_port()
    process = _start_webui(model, tmp_path, port)
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def _open_chat(browser, url: str, max_length_key: str):
    """A new tab on the chat with the "Max length" slider moved by a key (Home: 8, End: 2048)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url)
    page.get_by_test_id("stChatInputTextArea").wait_for(timeout=120_000)
    slider = page.get_by_role("slider").first
    slider.focus()
    slider.press(max_length_key)
    expected = "8" if max_length_key == "Home" else "2048"
    expect(slider).to_have_attribute("aria-valuetext", expected, timeout=30_000)
    return page


def _ask(page, question: str, index: int, to_the_end: bool = True) -> float:
    """Send `question`; seconds until answer `index` (0-based) shows its first text. With
    `to_the_end`, return only once the answer is whole (the script run has ended): a question
    sent while an answer streams would stop that run and drop the answer."""
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    start = time.perf_counter()
    box.press("Enter")
    answer = page.get_by_test_id("stChatMessage").nth(2 * index + 1)
    answer.wait_for(timeout=120_000)
    content = answer.get_by_test_id("stChatMessageContent")
    page.wait_for_function(
        "el => el.innerText.trim().length > 0", arg=content.element_handle(), timeout=120_000
    )
    seconds = time.perf_counter() - start
    if to_the_end:
        page.wait_for_function(
            "() => document.querySelector('[data-testid=stApp]')"
            ".getAttribute('data-test-script-state') === 'notRunning'",
            timeout=120_000,
        )
    return seconds


def _cpu_seconds(process: subprocess.Popen, seconds: float) -> float:
    """CPU time the web UI process (and its children) use over the next `seconds`."""
    procs = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]

    def total() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())

    before = total()
    time.sleep(seconds)
    return total() - before


def test_closed_tab_stops_its_answer_and_frees_the_model(webui, browser):
    url, process = webui
    other = _open_chat(browser, url, "Home")  # short answers: 8 tokens
    normal = min(_ask(other, f"Short question {i}?", i) for i in range(2))
    time.sleep(1.0)
    idle = _cpu_seconds(process, 2.0)

    tab = _open_chat(browser, url, "End")  # the longest answer the UI allows
    _ask(tab, "Tell me everything, at length.", 0, to_the_end=False)
    busy = _cpu_seconds(process, 2.0)
    assert busy > 0.3, f"the long answer is not generating ({busy:.2f} CPU-s in 2 s)"
    tab.close()  # the browser tab goes away mid-answer

    time.sleep(1.0)  # the server notices the closed connection
    after = _cpu_seconds(process, 2.0)
    assert after < max(0.15, 3 * idle), (
        f"the closed tab's answer kept generating: {after:.2f} CPU-s in 2 s "
        f"(idle {idle:.2f}, generating {busy:.2f})"
    )
    waited = _ask(other, "Short question again?", 2)
    assert waited < normal + 2.0, f"a short answer took {waited:.1f} s (normal {normal:.1f} s)"


def test_webui_streams_an_answer_in_the_browser(webui, browser, tmp_path):
    webui_url, _ = webui
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
