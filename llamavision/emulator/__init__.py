"""A local server that speaks both providers' wire formats, for offline tests and demos.

``Emulator`` is the ASGI app (scriptable, with fault injection and rate limits);
``EmulatorServer`` serves it on a free loopback port in a background thread, and
``EmulatorProcess`` in a process of its own (for load tests).
"""

from __future__ import annotations

from llamavision.emulator.app import (
    CONTROL_PREFIX,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_AIGATEWAY_KEY,
    DEFAULT_CLOUDFLARE_TOKEN,
    Emulator,
    Fault,
    Received,
    Reply,
)
from llamavision.emulator.server import (
    EmulatorProcess,
    EmulatorServer,
    emulator_env,
    serve,
    start_unless_configured,
    use_emulator_unless_configured,
)

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_AIGATEWAY_KEY",
    "DEFAULT_CLOUDFLARE_TOKEN",
    "Emulator",
    "EmulatorProcess",
    "EmulatorServer",
    "Fault",
    "Received",
    "Reply",
    "emulator_env",
    "serve",
    "start_unless_configured",
    "use_emulator_unless_configured",
]
