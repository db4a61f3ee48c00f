"""The emulator as a server: as fast on loopback as a bare server, and a busy port said plainly."""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llamavision import LlamaVisionClient, Message
from llamavision.cli import main
from llamavision.emulator import (
    CONTROL_PREFIX,
    Emulator,
    EmulatorProcess,
    EmulatorServer,
    use_emulator_unless_configured,
)
from llamavision.errors import ConfigurationError, RateLimitError, ServerError
from llamavision.providers import openai_compat
from tests.e2e.support import notebook_session

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "images" / "red-square.png"


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI app can answer: a fixed JSON body."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


@pytest.fixture
def bare_server() -> Iterator[str]:
    """Uvicorn binding its own socket, as its documentation shows: the reference point."""
    server = uvicorn.Server(
        uvicorn.Config(bare_app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    )
    started = threading.Event()
    real_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        try:
            await real_startup(sockets=sockets)
        finally:
            started.set()

    server.startup = startup  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started.wait()
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join()


def median_round_trip(url: str, headers: dict[str, str], body: dict[str, Any]) -> float:
    with httpx.Client() as http:
        http.post(url, json=body, headers=headers).raise_for_status()  # connect once
        times = []
        for _ in range(15):
            started = time.perf_counter()
            http.post(url, json=body, headers=headers).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_a_round_trip_costs_about_what_a_bare_server_costs(
    emulator_server: EmulatorServer, bare_server: str
) -> None:
    """Nagle's algorithm meeting a delayed ACK cost 44 ms per answer (55x a bare server)."""
    env = emulator_server.env()
    model = openai_compat.DEFAULT_MODEL  # the emulator knows the providers' model ids
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    ours = median_round_trip(
        env["AIGATEWAY_BASE_URL"] + "/chat/completions",
        {"Authorization": f"Bearer {env['AIGATEWAY_API_KEY']}"},
        body,
    )
    bare = median_round_trip(bare_server, {}, body)
    assert ours < 10 * bare, f"emulator {ours * 1000:.1f} ms, bare server {bare * 1000:.1f} ms"


def test_a_port_in_use_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"Port {port} .* in use.*port 0"):
            EmulatorServer(Emulator(), port).start()
        assert main(["emulator", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already in use" in err and "--port 0" in err, err


def test_the_request_log_says_what_was_served(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    # 12 a minute with a rested bucket of one: the first request goes, the second is refused.
    with EmulatorProcess(rate_limit=12, log=log, log_format="json") as server:
        env = server.env()
        with LlamaVisionClient(
            api_key=env["AIGATEWAY_API_KEY"], base_url=env["AIGATEWAY_BASE_URL"], max_retries=0
        ) as client:
            assert "synthetic answer" in client.chat("hi").text
            with pytest.raises(RateLimitError):
                client.chat("hi again")
        httpx.get(f"{server.url}/nowhere")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["status"]) for e in lines] == [
        ("POST", 200),
        ("POST", 429),
        ("GET", 404),
    ]
    first, refused, lost = lines
    assert first["path"] == "/v1/chat/completions" and first["provider"] == "aigateway"
    assert first["latency_ms"] >= 0 and first["time"].endswith("Z") and first["reason"] is None
    assert refused["reason"] == "over the rate limit of 12/min"
    assert lost["provider"] is None


def test_the_request_log_in_text_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    emulator = Emulator(request_log=sys.stderr)
    with EmulatorServer(emulator) as server:
        env = server.env()
        with LlamaVisionClient(
            api_key=env["AIGATEWAY_API_KEY"], base_url=env["AIGATEWAY_BASE_URL"]
        ) as client:
            client.chat("hi")
    (line,) = capsys.readouterr().err.splitlines()
    assert " POST /v1/chat/completions aigateway 200 " in line and line.endswith("ms")


def test_a_test_in_another_process_scripts_the_emulator_over_http() -> None:
    with EmulatorProcess() as server:
        control = httpx.Client(base_url=f"{server.url}{CONTROL_PREFIX}")
        reply = {"text": "A red square, scripted.", "usage": [10, 4]}
        assert control.post("replies", json={"replies": [reply]}).json() == {"ok": True}
        env = server.env()
        with LlamaVisionClient(
            api_key=env["AIGATEWAY_API_KEY"], base_url=env["AIGATEWAY_BASE_URL"], max_retries=0
        ) as client:
            answer = client.chat([Message.user("what?", image=SAMPLE)])
            assert answer.text == "A red square, scripted."
            control.post("faults", json={"faults": [{"kind": "status", "status": 500}]})
            with pytest.raises(ServerError):
                client.chat("what?")
        (received,) = control.get("requests").json()["requests"]  # the model answered one
        assert received["images"] == [f"image/png, {len(SAMPLE.read_bytes()):,} bytes"]
        assert "base64" not in json.dumps(received) and received["messages"][-1]["text"] == "what?"
        assert control.get("counters").json() == {
            "requests": 2,
            "received": 1,
            "rate_limited": 0,
            "embedded": 0,
        }
        control.post("reset")
        assert control.get("counters").json()["requests"] == 0
        bad = control.post("faults", json={"faults": [{"kind": "status", "_until": 1}]})
        assert bad.status_code == 400 and "Fault" in bad.json()["error"]
        assert control.get("nothing").status_code == 404


def test_the_control_api_is_off_on_request() -> None:
    with EmulatorServer(Emulator(control=False)) as server:
        answer = httpx.get(f"{server.url}{CONTROL_PREFIX}counters")
    assert answer.status_code == 404 and "off" in answer.json()["error"]


def test_a_notebook_setup_reuses_its_emulator_and_never_overwrites_the_users_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llamavision.emulator import server as module

    with notebook_session():
        url = use_emulator_unless_configured("aigateway")
        assert url and os.environ["AIGATEWAY_BASE_URL"] == f"{url}/v1"
        assert use_emulator_unless_configured("aigateway") == url  # run again: the same one
        assert module._SHARED is not None
        module._SHARED.stop()  # e.g. a cell that stopped it
        again = use_emulator_unless_configured("aigateway")
        assert again and again != url and os.environ["AIGATEWAY_BASE_URL"] == f"{again}/v1"
        os.environ["AIGATEWAY_BASE_URL"] = "http://proxy.internal/v1"  # the user's own
        use_emulator_unless_configured("aigateway")
        assert os.environ["AIGATEWAY_BASE_URL"] == "http://proxy.internal/v1"  # untouched
        os.environ["AIGATEWAY_API_KEY"] = "sk-real"  # the user's real key now
        assert use_emulator_unless_configured("aigateway") is None
        assert os.environ["AIGATEWAY_API_KEY"] == "sk-real"
        assert "credentials in the environment" in capsys.readouterr().out
