"""`tunesmith serve` with a port in use: exit 2 before the model loads, not exit 3 after."""

import socket

import pytest

from tunesmith.cli.main import main
from tunesmith.errors import UserError
from tunesmith.infer.server import check_address


def _never_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the port was checked")


def test_serve_on_a_port_in_use_exits_2_before_loading_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tunesmith.infer.chat.load_generator", _never_loaded)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"error: 127.0.0.1:{port} is in use: pick another --port" in err


def test_a_free_port_passes_and_a_foreign_host_is_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_address("127.0.0.1", port)
    with pytest.raises(UserError, match="not an address of this machine"):
        check_address("192.0.2.1", port)  # TEST-NET-1: never this machine's
