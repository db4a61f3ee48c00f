"""Image downloads (Cloudflare cannot fetch URLs): safe by default, over a real socket.

Only public addresses may be reached, on every redirect hop, unless the user opts in with
``ImageOptions(allow_private_urls=True)`` (as these tests must, to reach the emulator).
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image as PILImage

from llamavision import ImageError, ImageOptions, LlamaVisionClient, Message
from llamavision.downloads import is_public
from llamavision.emulator import Emulator, EmulatorServer

PRIVATE = ImageOptions(allow_private_urls=True)


def png() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (40, 30), (0, 200, 0)).save(out, "PNG")
    return out.getvalue()


def cloudflare(**kwargs: object) -> LlamaVisionClient:
    return LlamaVisionClient("cloudflare", accept_license=True, max_retries=0, **kwargs)  # type: ignore[arg-type]


def ask(client: LlamaVisionClient, url: str, mode: str) -> str:
    message = [Message.user("What is it?", image=url)]
    if mode == "sync":
        return client.chat(message).text
    return asyncio.run(client.achat(message)).text


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255",
        "::1", "::", "fc00::1", "fe80::1%eth0", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2001:db8::1",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public(address)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_private_url_is_refused_before_connecting(
    emulator: Emulator, emulator_server: EmulatorServer, mode: str
) -> None:
    url = emulator_server.url + emulator.host_image("g.png", png())
    with pytest.raises(ImageError, match=r"allow_private_urls=True") as caught:
        ask(cloudflare(), url, mode)
    assert "127.0.0.1 is not a public address" in str(caught.value)
    assert not emulator.downloads and not emulator.requests  # nothing was sent anywhere


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_with_the_opt_in_the_image_travels_inline_without_credentials(
    emulator: Emulator, emulator_server: EmulatorServer, mode: str
) -> None:
    url = emulator_server.url + emulator.host_image("g.png", png())
    assert "40x30 PNG" in ask(cloudflare(image_options=PRIVATE), url, mode)
    (download,) = emulator.downloads
    assert "authorization" not in download and "cookie" not in download
    assert emulator.requests[-1].images[0].startswith("data:image/png;base64,")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_redirect_hop_is_checked(
    emulator: Emulator,
    emulator_server: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    import llamavision.downloads as downloads

    # Pretend the emulator's own address is public; the redirect leads inside a network.
    monkeypatch.setattr(downloads, "is_public", lambda address: address == "127.0.0.1")
    inside = f"http://10.0.0.7:{emulator_server.port}/images/secret.png"
    url = emulator_server.url + emulator.host_image(
        "r.png", status=302, headers={"location": inside}
    )
    with pytest.raises(ImageError, match=r"10\.0\.0\.7 is not a public address"):
        ask(cloudflare(), url, mode)
    assert len(emulator.downloads) == 1  # only the first hop was fetched


def test_at_most_three_redirects(emulator: Emulator, emulator_server: EmulatorServer) -> None:
    emulator.host_image("img.png", png())
    for i in range(4):
        target = "img.png" if i == 0 else f"hop{i - 1}.png"
        emulator.host_image(f"hop{i}.png", status=302, headers={"location": target})
    ok = emulator_server.url + "/images/hop2.png"  # three redirects
    assert "40x30 PNG" in ask(cloudflare(image_options=PRIVATE), ok, "sync")
    too_far = emulator_server.url + "/images/hop3.png"  # four
    with pytest.raises(ImageError, match="more than 3 redirects"):
        ask(cloudflare(image_options=PRIVATE), too_far, "sync")


@pytest.mark.parametrize(
    ("hosted", "says"),
    [
        ({"status": 404}, "HTTP 404"),
        ({"data": b"<html>", "content_type": "text/html"}, "text/html"),
        ({"data": b"x" * 2000}, "size limit"),
        ({"status": 302}, "without a Location"),
        ({"status": 302, "headers": {"location": "ftp://example.com/a.png"}}, "not http"),
    ],
)
def test_bad_downloads_are_image_errors(
    emulator: Emulator, emulator_server: EmulatorServer, hosted: dict[str, object], says: str
) -> None:
    url = emulator_server.url + emulator.host_image("x.png", **hosted)  # type: ignore[arg-type]
    options = ImageOptions(allow_private_urls=True, max_input_bytes=1000)
    with pytest.raises(ImageError, match=says):
        ask(cloudflare(image_options=options), url, "sync")
    assert not emulator.requests  # the provider was never asked
