"""Run the emulator on a loopback port: in a background thread, or in the foreground (CLI)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TextIO

from llamavision.emulator.app import DEFAULT_ACCOUNT_ID, Emulator
from llamavision.errors import ConfigurationError
from llamavision.providers import PROVIDERS


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "The emulator needs uvicorn: pip install 'llamavision[emulator]'."
        ) from exc
    return uvicorn


class EmulatorServer:
    """The emulator served by uvicorn on ``127.0.0.1`` in a background thread.

    Use it as a context manager; :meth:`env` gives the environment variables that point
    :class:`~llamavision.LlamaVisionClient` (and the framework classes) at it.

    Example:
        .. code-block:: python

            with EmulatorServer() as server, server.patched_env():
                client = LlamaVisionClient()  # talks to the emulator

    """

    def __init__(self, emulator: Emulator | None = None, port: int = 0) -> None:
        self.emulator = emulator or Emulator()
        self._requested_port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def aigateway_base_url(self) -> str:
        """The base URL to give the client for ``provider="aigateway"``."""
        return f"{self.url}/v1"

    @property
    def cloudflare_base_url(self) -> str:
        """The base URL to give the client for ``provider="cloudflare"``."""
        return f"{self.url}/client/v4/accounts/{{account_id}}/ai/run"

    def env(self) -> dict[str, str]:
        """Return the environment variables that select this emulator and its keys."""
        return {
            "AIGATEWAY_API_KEY": self.emulator.keys["aigateway"],
            "AIGATEWAY_BASE_URL": self.aigateway_base_url,
            "CLOUDFLARE_API_TOKEN": self.emulator.keys["cloudflare"],
            "CLOUDFLARE_ACCOUNT_ID": DEFAULT_ACCOUNT_ID,
            "CLOUDFLARE_BASE_URL": self.cloudflare_base_url,
        }

    @contextmanager
    def patched_env(self) -> Iterator[None]:
        """Set :meth:`env` in ``os.environ`` for the duration of the block."""
        saved = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def start(self) -> EmulatorServer:
        """Bind the port and serve in a background thread; return once it accepts requests."""
        uvicorn = _uvicorn()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.emulator, log_level="critical", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            daemon=True,
            name="llamavision-emulator",
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _credential_names(provider: str) -> list[str]:
    codec = PROVIDERS[provider]
    return [*([codec.ACCOUNT_ENV] if codec.ACCOUNT_ENV else []), codec.KEY_ENV]


def start_unless_configured(
    provider: str = "aigateway", stream: TextIO | None = None
) -> EmulatorServer | None:
    """Start the emulator when ``provider``'s credentials are not in the environment.

    Prints one line saying so (answers are then synthetic) and how to use the real model.
    Returns the running server (point clients at it with :meth:`EmulatorServer.env`), or
    ``None`` when the credentials are set and the real provider should be used.
    """
    needed = _credential_names(provider)
    if all(os.environ.get(name) for name in needed):
        return None
    server = EmulatorServer().start()
    names = " and ".join(needed)
    print(
        f"llamavision: no {names} set, so this runs against the bundled emulator at "
        f"{server.url}: answers are synthetic. Set {names} to use the real model.",
        file=stream or sys.stderr,
    )
    return server


def serve(port: int = 8799, host: str = "127.0.0.1", *, license_gate: bool = True) -> None:
    """Serve the emulator in the foreground until interrupted (``llamavision emulator``)."""
    _uvicorn().run(
        Emulator(license_gate=license_gate), host=host, port=port, log_level="info", lifespan="off"
    )
