"""Fixtures for the chat, web UI and server tests: one tiny model, loaded once."""

from __future__ import annotations

import socket

import pytest


def _pick_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a loopback port nobody listens on."""
    return _pick_free_port
