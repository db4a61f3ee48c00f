"""Hostile input holds: bounded memory, typed errors, no credential anywhere.

Each test reproduces one finding of the security review (issue 22) against loopback servers.
Where memory was the problem, peak RSS is measured in a child process and compared with a
plain run of the same code path, as a ratio (absolute figures are noisy).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from llamavision import (
    ConfigurationError,
    ImageError,
    ImageOptions,
    LlamaVisionClient,
    LlamaVisionError,
    Message,
    resolve_image,
)
from llamavision.captions import caption_images, load_captions
from llamavision.downloads import is_public
from llamavision.emulator import Emulator, EmulatorServer, Reply
from llamavision.images import load_image_bytes

PRIVATE = ImageOptions(allow_private_urls=True)


def png(size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (0, 200, 0)).save(out, "PNG")
    return out.getvalue()


def peak_rss_kib(code: str) -> int:
    """Run ``code`` in a fresh interpreter and return its peak RSS in KiB."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import resource
        print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    return int(done.stdout.rsplit("PEAK", 1)[1])


# ----------------------------------------------------------------------- compressed downloads


def zstd_bomb(size: int) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    writer = zstandard.ZstdCompressor(level=19).compressobj()
    chunk = bytes(1 << 20)
    body = b"".join(writer.compress(chunk) for _ in range(size >> 20))
    return body + writer.flush()


def gzip_bomb(size: int) -> bytes:
    writer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    chunk = bytes(1 << 20)
    body = b"".join(writer.compress(chunk) for _ in range(size >> 20))
    return body + writer.flush()


DOWNLOAD = """
import os, sys
from llamavision import ImageError, ImageOptions
from llamavision.downloads import download, http_client
options = ImageOptions(allow_private_urls=True)
with http_client(options) as http:
    try:
        download(http, os.environ["URL"], options)
    except ImageError as exc:
        print("refused:", exc)
"""


@pytest.mark.parametrize(("encoding", "bomb"), [("zstd", zstd_bomb), ("gzip", gzip_bomb)])
def test_a_compressed_download_is_refused_without_expanding(
    emulator: Emulator, emulator_server: EmulatorServer, encoding: str, bomb: object
) -> None:
    body = bomb(512 << 20)  # type: ignore[operator]  # 512 MiB once expanded
    assert len(body) < 1 << 20
    url = emulator_server.url + emulator.host_image(
        "bomb.png", body, headers={"content-encoding": encoding}
    )
    plain = emulator_server.url + emulator.host_image("plain.png", png())
    with pytest.raises(ImageError, match=f"compressed .*{encoding}"):
        asyncio.run(
            LlamaVisionClient("cloudflare", accept_license=True, image_options=PRIVATE).achat(
                [Message.user("What?", image=url)]
            )
        )
    (asked,) = [d for d in emulator.downloads if d["path"].endswith("bomb.png")]
    assert asked.get("accept-encoding") == "identity"
    bombed = peak_rss_kib(f"import os; os.environ['URL'] = {url!r}\n" + DOWNLOAD)
    baseline = peak_rss_kib(f"import os; os.environ['URL'] = {plain!r}\n" + DOWNLOAD)
    assert bombed < 1.3 * baseline, (bombed, baseline)


# ----------------------------------------------------------------------- slow downloads


class Dripper:
    """A loopback HTTP server that answers an image request one byte at a time."""

    def __init__(self, every: float = 0.05, limit: float = 30.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"
        self.asked = threading.Event()
        self.stop = threading.Event()
        self.every, self.limit = every, limit
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            self.asked.set()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n"
            )
            for _ in range(int(self.limit / self.every)):  # bounded: at most `limit` seconds
                if self.stop.wait(self.every):
                    return
                try:
                    conn.sendall(b"\x89")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def dripper() -> Iterator[Dripper]:
    server = Dripper()
    yield server
    server.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dripping_download_ends_at_its_deadline(
    dripper: Dripper, emulator: Emulator, mode: str
) -> None:
    options = ImageOptions(allow_private_urls=True, download_timeout=0.5)
    client = LlamaVisionClient("cloudflare", accept_license=True, image_options=options)
    message = [Message.user("What?", image=dripper.url)]
    with pytest.raises(ImageError, match=r"took longer than 0.5 s"):
        if mode == "sync":
            client.chat(message)
        else:
            asyncio.run(client.achat(message))
    assert not dripper.stop.is_set()  # it ended by itself, while the server still dripped


def test_a_download_does_not_hold_a_concurrency_slot(dripper: Dripper, emulator: Emulator) -> None:
    options = ImageOptions(allow_private_urls=True, download_timeout=60)
    client = LlamaVisionClient(
        "cloudflare", accept_license=True, image_options=options, max_concurrency=1
    )
    failed: list[BaseException] = []

    def slow() -> None:
        try:
            client.chat([Message.user("What?", image=dripper.url)])
        except LlamaVisionError as exc:
            failed.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    assert dripper.asked.wait(30)
    assert "You asked" in client.chat("hi").text  # does not wait for the download
    assert thread.is_alive()  # the download was still going on
    dripper.stop.set()
    thread.join()
    assert failed and isinstance(failed[0], ImageError)


# ----------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "location", ["data:image/png;base64,iVBORw0KGgo=", "http://0177.0.0.1/x.png", "http://[::1/"]
)
def test_odd_redirect_targets_are_image_errors(
    emulator: Emulator, emulator_server: EmulatorServer, location: str
) -> None:
    url = emulator_server.url + emulator.host_image(
        "r.png", status=302, headers={"location": location}
    )
    client = LlamaVisionClient("cloudflare", accept_license=True, image_options=PRIVATE)
    with pytest.raises(ImageError):
        client.chat([Message.user("What?", image=url)])


@pytest.mark.parametrize(
    "url", ["http://0177.0.0.1/x.png", "http://[::1/x.png", "http://a b/x.png"]
)
def test_odd_urls_are_image_errors(emulator: Emulator, url: str) -> None:
    client = LlamaVisionClient("cloudflare", accept_license=True)
    with pytest.raises(ImageError):
        client.chat([Message.user("What?", image=url)])


@pytest.mark.parametrize(
    "address",
    ["::a9fe:a9fe", "::7f00:1", "::ffff:0:a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", "64:ff9b:1::7f00:1"],
)
def test_wrapped_forms_of_private_ipv4_are_refused(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["::ffff:0:808:808", "64:ff9b::808:808"])
def test_wrapped_forms_of_public_ipv4_stay_public(address: str) -> None:
    assert is_public(address)


# ----------------------------------------------------------------------- decoding


def exif_jpeg() -> bytes:
    """A 40x40 JPEG whose EXIF says Orientation=6 and types its 0xA005 pointer as BYTE."""
    entries = [(0x0112, 3, 1, struct.pack(">HH", 6, 0)), (0xA005, 1, 1, b"\x01\x00\x00\x00")]
    ifd = struct.pack(">H", len(entries))
    ifd += b"".join(struct.pack(">HHI", t, kind, n) + v for t, kind, n, v in entries)
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00\x00\x00\x00"
    out = io.BytesIO()
    PILImage.new("RGB", (40, 40), "red").save(out, "JPEG", exif=exif)
    return out.getvalue()


def png_bomb(side: int) -> bytes:
    """A PNG header announcing ``side`` x ``side`` RGBA pixels, with a small valid stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    writer = zlib.compressobj(9)
    row = bytes(1 + 4 * side)
    idat = b"".join(writer.compress(row) for _ in range(200)) + writer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_a_broken_exif_block_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="cannot be decoded"):
        load_image_bytes(exif_jpeg())


def test_a_pixel_bomb_is_refused_from_its_header(recwarn: pytest.WarningsRecorder) -> None:
    with pytest.raises(ImageError, match=r"13000x13000 .*max_pixels"):
        load_image_bytes(png_bomb(13000))
    assert not [w for w in recwarn if issubclass(w.category, PILImage.DecompressionBombWarning)]
    bomb = peak_rss_kib(
        f"""
        from llamavision.images import load_image_bytes
        try:
            load_image_bytes({png_bomb(13000)!r})
        except Exception as exc:
            print(type(exc).__name__)
        """
    )
    plain = peak_rss_kib(
        f"""
        from llamavision.images import load_image_bytes
        load_image_bytes({png((2000, 2000))!r})
        """
    )
    assert bomb < 1.3 * plain, (bomb, plain)


def test_a_big_jpeg_is_still_accepted_as_its_draft_is_small() -> None:
    out = io.BytesIO()
    PILImage.new("RGB", (9000, 6000), "blue").save(out, "JPEG", quality=50)
    resolved = load_image_bytes(out.getvalue(), ImageOptions(max_pixels=10_000_000))
    assert max(resolved.width, resolved.height) == 1120


@pytest.mark.parametrize(
    "data",
    [
        b"BM\x00\x00\x00\x00\x00\x00WEBP" + bytes(64),  # a BMP with WEBP at offset 8
        b"II*\x00\x08\x00\x00\x00WEBP" + bytes(64),  # a TIFF with WEBP at offset 8
        b"XXXX\x00\x00\x00\x00WEBPVP8 " + bytes(64),  # WEBP without RIFF
    ],
)
def test_webp_polyglots_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match="not a supported image"):
        load_image_bytes(data)


def test_a_real_webp_is_still_accepted() -> None:
    out = io.BytesIO()
    PILImage.new("RGB", (30, 20), "green").save(out, "WEBP")
    assert load_image_bytes(out.getvalue(), ImageOptions(reencode=False)).mime_type == "image/webp"


def test_failure_messages_never_echo_a_files_bytes(tmp_path: Path) -> None:
    secret = tmp_path / "notes.jpg"
    secret.write_bytes(b"password=hunter2 and more")
    with pytest.raises(ImageError) as caught:
        resolve_image(secret)
    assert "hunter2" not in str(caught.value) and "passw" not in str(caught.value)


# ----------------------------------------------------------------------- the caption job


def run_caption(folder: Path, out: Path, **kwargs: object) -> object:
    client = LlamaVisionClient()
    return asyncio.run(caption_images(sorted(folder.iterdir()), out, client, **kwargs))  # type: ignore[arg-type]


def test_a_broken_exif_image_fails_alone_in_a_caption_run(
    emulator: Emulator, tmp_path: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(exif_jpeg())
    (folder / "good.png").write_bytes(png())
    summary = run_caption(folder, tmp_path / "c.jsonl")
    assert summary.captioned == 1 and list(summary.failures) == [str(folder / "bad.jpg")]  # type: ignore[attr-defined]


def test_a_huge_file_is_refused_by_its_size_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "video.jpg"
    with huge.open("wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB on paper, nothing on disk
    code = f"""
        import asyncio
        from pathlib import Path
        from llamavision import LlamaVisionClient
        from llamavision.captions import caption_images
        from llamavision.emulator import EmulatorServer
        with EmulatorServer() as server, server.patched_env():
            summary = asyncio.run(caption_images(
                [Path({str(huge)!r})], Path({str(tmp_path / "c.jsonl")!r}), LlamaVisionClient()))
        assert "limit" in summary.failures[{str(huge)!r}], summary.failures
    """
    huge_peak = peak_rss_kib(code)
    plain = tmp_path / "plain.png"
    plain.write_bytes(png())
    plain_peak = peak_rss_kib(
        code.replace(str(huge), str(plain)).replace(
            '"limit" in summary.failures', "not summary.failures or"
        )
    )
    assert huge_peak < 1.3 * plain_peak, (huge_peak, plain_peak)


def test_a_non_utf8_file_name_is_written_losslessly(emulator: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    (folder / name).write_bytes(png())
    out = tmp_path / "c.jsonl"
    summary = run_caption(folder, out)
    assert summary.captioned == 1, summary.failures  # type: ignore[attr-defined]
    (record,) = load_captions(out)
    assert Path(record["image_path"]).name == name and (folder / name).exists()


def test_a_symlink_out_of_the_folder_is_skipped(emulator: Emulator, tmp_path: Path) -> None:
    from llamavision.captions import find_images

    outside = tmp_path / "outside.png"
    outside.write_bytes(png())
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "inside.png").write_bytes(png((10, 10)))
    (folder / "link.png").symlink_to(outside)
    (folder / "local.png").symlink_to(folder / "inside.png")
    found = find_images(folder)
    assert [p.name for p in found] == ["inside.png", "local.png"]
    assert [p.name for p in find_images(folder, follow_symlinks=True)] == [
        "inside.png", "link.png", "local.png",
    ]  # fmt: skip


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_captions_are_one_line_to_every_reader(
    emulator: Emulator, tmp_path: Path, char: str
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(png())
    emulator.script(Reply(text=f"one{char}two"))
    out = tmp_path / "c.jsonl"
    run_caption(folder, out)
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 and char not in text
    assert load_captions(out)[0]["caption"] == f"one{char}two"


# ----------------------------------------------------------------------- credentials


def test_a_key_with_a_trailing_newline_is_stripped(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIGATEWAY_API_KEY", os.environ["AIGATEWAY_API_KEY"] + "\r\n")
    assert "You asked" in LlamaVisionClient().chat("hi").text


@pytest.mark.parametrize(
    "key", ["abc\ndef-secret-value", "abc\x00def-secret-value", "abcdéf-secret-value"]
)
def test_a_key_that_cannot_be_sent_is_refused_without_echo(key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LlamaVisionClient(api_key=key)
    assert "secret-value" not in str(caught.value) and "def" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        LlamaVisionClient(
            "cloudflare", account_id="a", api_key="ok-token", gateway_id="g", gateway_token=key
        )
    assert "secret-value" not in str(caught.value)


@pytest.mark.parametrize(
    "options",
    [
        {"default_headers": {"X-Secret": "v\r\nInjected: 1"}},
        {"default_headers": {"X-Secret": "café"}},
        {"default_headers": {"Bad Name": "v"}},
        {"gateway_cache_key": "k\nx", "gateway_id": "g", "provider": "cloudflare"},
    ],
)
def test_header_values_that_cannot_be_sent_are_configuration_errors(
    emulator: Emulator, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LlamaVisionClient(**options)  # type: ignore[arg-type]
    assert "Injected" not in str(caught.value) and "café" not in str(caught.value)


def test_per_call_headers_that_cannot_be_sent_are_configuration_errors(emulator: Emulator) -> None:
    client = LlamaVisionClient()
    with pytest.raises(ConfigurationError) as caught:
        client.chat("hi", extra_headers={"X-Trace": "a\nb-value"})
    assert "b-value" not in str(caught.value)
    assert not emulator.requests


@pytest.mark.parametrize("metadata", [{"n": math.nan}, {"n": math.inf}, {"nested": {"a": 1}}])
def test_gateway_metadata_must_be_flat_json(
    emulator: Emulator, metadata: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        LlamaVisionClient("cloudflare", gateway_id="g", gateway_metadata=metadata)  # type: ignore[arg-type]


def test_a_key_echoed_mid_stream_is_not_in_the_traceback() -> None:
    from tests.recorded import http_clients

    key = "sk-echoed-secret-0123456789"
    events = [
        {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"content": {"echo": key}}}]},
    ]
    client = LlamaVisionClient(**{**http_clients(events), "api_key": key})
    with pytest.raises(LlamaVisionError) as caught:
        for _ in client.stream("hi"):
            pass
    shown = "".join(traceback.format_exception(caught.value))
    assert "echo" in shown and key not in shown and key[:12] not in shown


def test_default_headers_are_secret_in_both_frameworks(emulator: Emulator) -> None:
    from langchain_core.load import dumpd, dumps

    from langchain_llamavision import ChatLlamaVision
    from llamaindex_llamavision import LlamaVision

    value = "access-client-secret-123"
    chat = ChatLlamaVision(default_headers={"CF-Access-Client-Secret": value})
    assert value not in repr(chat) and value not in str(chat.model_dump())
    assert value not in json.dumps(dumpd(chat), default=str) and value not in dumps(chat)
    assert "You asked" in chat.invoke("hi").content  # still sent
    assert emulator.requests[-1].headers.get("cf-access-client-secret") == value
    llm = LlamaVision(default_headers={"CF-Access-Client-Secret": value})
    assert value not in repr(llm) and value not in str(llm.model_dump())


# ----------------------------------------------------------------------- the emulator


def raw_post(url: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """POST over a plain socket, declaring what ``headers`` say; return the status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\n{head}\r\n".encode() + body)
        return int(conn.recv(4096).split(b" ", 2)[1])


def test_the_emulator_answers_before_reading_a_body_it_will_not_take(
    emulator: Emulator, emulator_server: EmulatorServer
) -> None:
    declared = {"content-type": "application/json", "content-length": str(600 << 20)}
    assert raw_post(emulator_server.url, "/v1/chat/completions", declared) == 401
    key = {"authorization": f"Bearer {emulator.keys['aigateway']}"}
    assert raw_post(emulator_server.url, "/v1/chat/completions", {**declared, **key}) == 413
    assert not emulator.requests  # neither was read, nor counted as a request


@pytest.mark.parametrize("provider", ["aigateway", "cloudflare"])
def test_the_emulator_answers_400_to_image_bombs_and_broken_images(
    emulator: Emulator, emulator_server: EmulatorServer, provider: str
) -> None:
    import base64

    import httpx

    env = emulator_server.env()
    for data in (png_bomb(13000), b"\x89PNG\r\n\x1a\n" + bytes(40)):
        url = f"data:image/png;base64,{base64.b64encode(data).decode()}"
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
        if provider == "aigateway":
            target = env["AIGATEWAY_BASE_URL"] + "/chat/completions"
            token = env["AIGATEWAY_API_KEY"]
        else:
            base = env["CLOUDFLARE_BASE_URL"].replace("{account_id}", env["CLOUDFLARE_ACCOUNT_ID"])
            target = base + "/@cf/meta/llama-3.2-11b-vision-instruct"
            token = env["CLOUDFLARE_API_TOKEN"]
            emulator.agreed_accounts.add(env["CLOUDFLARE_ACCOUNT_ID"])
        body = {
            "model": "meta/llama-3.2-11b-vision-instruct",
            "messages": [{"role": "user", "content": content}],
        }
        answer = httpx.post(
            target, json=body, headers={"authorization": f"Bearer {token}"}, timeout=60
        )
        assert answer.status_code == 400, answer.text
        assert "Invalid image" in answer.text


def test_the_emulator_keeps_no_credential(emulator: Emulator) -> None:
    LlamaVisionClient().chat("hi")
    assert emulator.requests[-1].headers["authorization"] == "[accepted]"


def test_an_emulator_beyond_loopback_warns_and_uses_random_keys(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "llamavision.cli", "emulator", "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines = []
        while not any("CLOUDFLARE_API_TOKEN=" in line for line in lines):
            line = process.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        said = "".join(lines)
    finally:
        process.terminate()
        process.wait()
    assert "WARNING: listening on 0.0.0.0" in said
    assert "AIGATEWAY_API_KEY=emulator-key" not in said and "emulator-token" not in said


def test_the_cli_reports_skipped_links_and_escapes_control_characters(
    emulator: Emulator, tmp_path: Path
) -> None:
    from llamavision.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    (tmp_path / "outside.png").write_bytes(png())
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    (folder / "evil\x1b[2J.png").write_bytes(b"not an image")
    (folder / "good.png").write_bytes(png())
    out, err = io.StringIO(), io.StringIO()
    code = main(["caption", str(folder), "--out", str(tmp_path / "c.jsonl")], out=out, err=err)
    said = err.getvalue()
    assert code == 3 and "1 captioned" in said and "1 failed" in said  # 3: some failed
    assert "skipped:" in said and "link.png" in said and "--follow-symlinks" in said
    assert "\x1b" not in said and "evil\\x1b[2J.png" in said
