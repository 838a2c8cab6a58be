"""The web UI app driven by streamlit's AppTest (no browser): what a question does."""

import sys

from streamlit.testing.v1 import AppTest

from tunesmith.cli.infer import WEBUI_APP


def test_webui_refuses_a_blank_question(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["webui", "--model", str(tiny_model_dir), "--device", "cpu"])
    at = AppTest.from_file(str(WEBUI_APP), default_timeout=60).run()
    at.sidebar.slider[0].set_value(8)  # max new tokens
    at.chat_input[0].set_value("  \n ").run()
    assert [w.value for w in at.warning] == ["The question is empty: type some text to ask."]
    assert at.session_state.messages == []  # nothing asked, nothing answered
    at.chat_input[0].set_value("hi").run()
    assert [m["role"] for m in at.session_state.messages] == ["user", "assistant"]
