"""Run the emulator on a loopback port: in a background thread, or in the foreground (CLI)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal, TextIO

from llamavision.emulator.app import (
    DEFAULT_AIGATEWAY_KEY,
    DEFAULT_CLOUDFLARE_TOKEN,
    Emulator,
)
from llamavision.errors import ConfigurationError, missing_extra
from llamavision.providers import PROVIDERS


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise missing_extra("emulator", "The emulator", exc) from None
    return uvicorn


class EmulatorServer:
    """The emulator served by uvicorn on ``127.0.0.1`` in a background thread.

    Use it as a context manager; :meth:`env` gives the environment variables that point
    :class:`~llamavision.LlamaVisionClient` (and the framework classes) at it.
    ``rate_limit`` limits each account to that many requests per minute and ``latency``
    delays each answer by that many seconds (see :class:`~llamavision.emulator.Emulator`).

    Example:
        .. code-block:: python

            with EmulatorServer() as server, server.patched_env():
                client = LlamaVisionClient()  # talks to the emulator

    """

    def __init__(
        self,
        emulator: Emulator | None = None,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        rate_limit: float | None = None,
        latency: float = 0.0,
    ) -> None:
        self.emulator = emulator or Emulator(rate_limit=rate_limit, latency=latency)
        self.host = host
        self._requested_port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The server's root URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def aigateway_base_url(self) -> str:
        """The base URL to give the client for ``provider="aigateway"``."""
        return f"{self.url}/v1"

    @property
    def cloudflare_base_url(self) -> str:
        """The base URL to give the client for ``provider="cloudflare"``."""
        return f"{self.url}/client/v4/accounts/{{account_id}}/ai/run"

    @property
    def cloudflare_gateway_base_url(self) -> str:
        """The base URL of the emulated Cloudflare AI Gateway route (``gateway_id=...``)."""
        return f"{self.url}/v1/{{account_id}}/{{gateway_id}}/workers-ai"

    def env(self) -> dict[str, str]:
        """Return the environment variables that select this emulator and its keys."""
        return emulator_env(self.url, self.emulator.keys)

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
        """Bind the port and serve in a background thread; return once it accepts requests.

        Raises:
            ConfigurationError: the port is in use.

        """
        uvicorn = _uvicorn()
        # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # sockets that say they are TCP, and accepted sockets inherit the listener's protocol.
        # With 0 every answer waited for the client's delayed ACK: 44 ms per request.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"Port {self._requested_port} on {self.host} is already in use: stop what uses "
                "it, or choose another port (port 0, --port 0 on the command line, takes any "
                "free one)."
            ) from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.emulator, log_level="critical", lifespan="off", timeout_graceful_shutdown=1
        )
        started = threading.Event()

        class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
            async def startup(self, sockets: Any = None) -> None:
                try:
                    await super().startup(sockets=sockets)
                finally:
                    started.set()

        self._server = Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock, started), daemon=True, name="llamavision-emulator"
        )
        self._thread.start()
        started.wait()
        if not self._server.started:
            raise RuntimeError(f"the emulator did not start on {self.url}")
        return self

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        try:
            self._server.run(sockets=[sock])
        finally:
            started.set()  # a server that failed before starting must not hang start()

    @property
    def running(self) -> bool:
        """Whether the server is serving (started, not stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the server stops (or the caller is interrupted)."""
        if self._thread is not None:
            self._thread.join()

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


def emulator_env(url: str, keys: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment variables that point clients at an emulator at ``url``."""
    from llamavision.emulator import aigateway, cloudflare

    keys = keys or {
        aigateway.NAME: DEFAULT_AIGATEWAY_KEY,
        cloudflare.NAME: DEFAULT_CLOUDFLARE_TOKEN,
    }
    return {**aigateway.client_env(url, keys[aigateway.NAME]),
            **cloudflare.client_env(url, keys[cloudflare.NAME])}  # fmt: skip


class EmulatorProcess:
    """The emulator in its own process (``llamavision emulator --port 0``), for load tests.

    A client measured against it shares no CPU, memory or GIL with the emulator. Use it as a
    context manager; :meth:`env` points clients at it.

    Args:
        rate_limit: requests per minute allowed per account (``--rate-limit``).
        license_gate: emulate Cloudflare's license acceptance.
        latency: seconds each answer takes to start (``--latency``).
        log: a file to write the request log to (``--log``), one line per request.
        log_format: ``"text"`` or ``"json"`` (``--log-format``).

    """

    def __init__(
        self,
        *,
        rate_limit: float | None = None,
        license_gate: bool = True,
        latency: float = 0.0,
        log: str | os.PathLike[str] | None = None,
        log_format: str = "text",
    ) -> None:
        self.args = [sys.executable, "-m", "llamavision.cli", "emulator", "--port", "0"]
        if log is not None:
            self.args += ["--log", os.fspath(log), "--log-format", log_format]
        if rate_limit is not None:
            self.args += ["--rate-limit", str(rate_limit)]
        if latency:
            self.args += ["--latency", str(latency)]
        if not license_gate:
            self.args.append("--no-license-gate")
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> EmulatorProcess:
        """Start the process; return once it says it accepts requests."""
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stderr is not None
        said = []
        for line in self.process.stderr:  # blocks until the server says it is ready
            said.append(line)
            if line.startswith("llamavision emulator ready at "):
                self.url = line.rsplit(" ", 1)[-1].strip()
                break
        else:
            raise RuntimeError("the emulator process did not start: " + "".join(said))
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # drain
        return self

    def env(self) -> dict[str, str]:
        """Return the environment variables that select this emulator and its keys."""
        return emulator_env(self.url)

    def stop(self) -> None:
        """Stop the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()

    def __enter__(self) -> EmulatorProcess:
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


def configured_by_user(provider: str) -> bool:
    """Return whether ``provider``'s credentials are in the environment, set by the user.

    Not when :func:`use_emulator_unless_configured` set them for the bundled emulator.
    """
    return all(
        os.environ.get(name) and os.environ.get(name) != _OWNED.get(name)
        for name in _credential_names(provider)
    )


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


_SHARED: EmulatorServer | None = None  # the emulator use_emulator_unless_configured started
_OWNED: dict[str, str] = {}  # the variables it set, with the values it set


def use_emulator_unless_configured(
    provider: str = "aigateway", stream: TextIO | None = None
) -> str | None:
    """Use ``provider`` as configured, or the bundled emulator when its credentials are not set.

    For notebooks and scripts that run again and again in one process: the emulator is started
    once and reused (restarted if it was stopped); only variables that are not set are set,
    so a variable the user set (a real key, an account id) is never overwritten; a variable
    this function set that the user changed since is the user's. Run again after setting the
    real credentials, it takes its own variables away and the real provider is used.

    Args:
        provider: the provider the notebook uses (``"aigateway"`` or ``"cloudflare"``).
        stream: where to say which one answers (default: stdout).

    Returns:
        The emulator's URL when it answers, ``None`` when the real provider does.

    """
    global _SHARED
    out = stream or sys.stdout
    for name, value in list(_OWNED.items()):
        if os.environ.get(name) != value:
            del _OWNED[name]  # changed or removed by the user: theirs now
    if configured_by_user(provider):
        for name in list(_OWNED):
            del os.environ[name], _OWNED[name]
        print(f"llamavision: using {provider} with the credentials in the environment.", file=out)
        return None
    if _SHARED is None or not _SHARED.running:
        _SHARED = EmulatorServer().start()
    for name, value in _SHARED.env().items():
        if name in _provider_variables(provider) and (name in _OWNED or name not in os.environ):
            os.environ[name] = _OWNED[name] = value
    missing = " and ".join(_credential_names(provider))
    print(
        f"llamavision: no {missing} set, so {provider} is the bundled emulator at "
        f"{_SHARED.url}: answers are synthetic. Set {missing} (and run this again) to use the "
        "real model.",
        file=out,
    )
    return _SHARED.url


def _provider_variables(provider: str) -> set[str]:
    """Return the names of the variables that configure ``provider`` (and its base URLs)."""
    codec = PROVIDERS[provider]
    names = [codec.KEY_ENV, codec.ACCOUNT_ENV, codec.BASE_URL_ENV, codec.GATEWAY_BASE_URL_ENV]
    return {name for name in names if name}


def _interrupt(signum: int, frame: Any) -> None:
    """Stop serving on SIGTERM as on Ctrl+C: requests in flight finish, the log is written."""
    raise KeyboardInterrupt


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    port: int = 8799,
    host: str = "127.0.0.1",
    *,
    license_gate: bool = True,
    rate_limit: float | None = None,
    latency: float = 0.0,
    announce: TextIO | None = None,
    request_log: TextIO | None = None,
    log_format: Literal["text", "json"] = "text",
    control: bool | None = None,
) -> None:
    """Serve the emulator until interrupted (``llamavision emulator``).

    Once it accepts requests, writes ``llamavision emulator ready at URL`` (the real port when
    ``port`` is 0) and how to point clients at it to ``announce`` (default: stderr). With
    ``request_log``, one line per request goes there (see :class:`Emulator`). The control
    API is served on a loopback host, and elsewhere only with ``control=True``.
    """
    stream = announce or sys.stderr
    emulator = Emulator(
        license_gate=license_gate,
        rate_limit=rate_limit,
        latency=latency,
        request_log=request_log,
        log_format=log_format,
        control=_is_loopback(host) if control is None else control,
    )
    if not _is_loopback(host):
        # reachable from other machines: keys nobody can guess, unless the caller sets them
        emulator.keys = {
            "aigateway": os.environ.get("LLAMAVISION_EMULATOR_AIGATEWAY_KEY")
            or secrets.token_urlsafe(24),
            "cloudflare": os.environ.get("LLAMAVISION_EMULATOR_CLOUDFLARE_TOKEN")
            or secrets.token_urlsafe(24),
        }
        print(
            f"llamavision emulator: WARNING: listening on {host}, not only on this machine. "
            "Anyone who can reach it can use it with the keys below (random for this run; set "
            "LLAMAVISION_EMULATOR_AIGATEWAY_KEY and LLAMAVISION_EMULATOR_CLOUDFLARE_TOKEN to "
            "choose them). It is a test tool: keep it on 127.0.0.1 unless you need otherwise.",
            file=stream,
        )
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `docker stop`, `kill`: stop as on Ctrl+C
    with EmulatorServer(emulator, port, host=host) as server:
        print(f"llamavision emulator ready at {server.url}", file=stream)
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in server.env().items())
        print(f"Point clients at it with:\n  export {exports}", file=stream, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
