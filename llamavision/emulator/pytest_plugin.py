"""Pytest fixtures (registered as a plugin): the emulator on a free loopback port.

``emulator_server`` serves for the whole session; ``emulator`` gives each test a reset
:class:`~llamavision.emulator.Emulator` and points the provider environment variables at it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llamavision.emulator.app import Emulator
from llamavision.emulator.server import EmulatorServer


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    """Serve the emulator on a free loopback port for the test session."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Return the session's emulator, reset, with the provider variables pointing at it."""
    emulator_server.emulator.reset()
    emulator_server.emulator.license_gate = True
    emulator_server.emulator.cloudflare_stream_shape = "response"
    emulator_server.emulator.rate_limit = None
    emulator_server.emulator.rate_burst = None
    emulator_server.emulator.gateway_token = None
    for key, value in emulator_server.env().items():
        monkeypatch.setenv(key, value)
    return emulator_server.emulator
