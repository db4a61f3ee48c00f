"""Downloading image URLs without opening a server-side request forgery hole.

The client downloads an image only when a provider cannot fetch URLs itself (Cloudflare) or
to compose a grid. In a RAG app image URLs come from documents and users, so by default every
connection, redirects included, may only go to a public address: the check happens when the
socket connects, on the address actually dialled (so DNS cannot answer differently between
a check and the connection). Loopback, private ranges, link-local (cloud metadata services at
169.254.169.254), CGNAT, multicast, reserved and unspecified addresses, their IPv6
equivalents and IPv4 addresses wrapped in IPv6 are refused, with an :class:`ImageError` that
says how to opt in: ``ImageOptions(allow_private_urls=True)``.

Downloads use a client of their own: no provider credentials or cookies, no proxy from the
environment (a proxy would connect on our behalf, unchecked), at most three redirects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpcore
import httpx

from llamavision.errors import ImageError
from llamavision.images import ImageOptions

MAX_REDIRECTS = 3
# IPv6 forms that carry an IPv4 address in their last 32 bits: IPv4-compatible (deprecated),
# IPv4-translated (SIIT) and NAT64 (well-known and local-use prefixes).
_WRAPPING = tuple(
    ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def is_public(address: str) -> bool:
    """Return whether an IP address is a public unicast address (IPv4 inside IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and int(ip) > 1 and any(ip in net for net in _WRAPPING):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return is_public(str(inner))
    return ip.is_global and not ip.is_multicast


class NotPublicError(httpcore.ConnectError):
    """A connection to a non-public address was refused."""


def _public_address(host: str, addresses: Sequence[str]) -> str:
    refused = [a for a in addresses if not is_public(a)]
    if refused or not addresses:
        what = refused[0] if refused else "nothing"
        shown = host if host == what else f"{host} ({what})"
        raise NotPublicError(f"{shown} is not a public address")
    return addresses[0]


class _PublicOnly(httpcore.SyncBackend):
    """Connects only to public addresses, checked on the address it dials."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        address = _public_address(host, [str(info[4][0]) for info in infos])
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


class _AsyncPublicOnly(httpcore.AnyIOBackend):
    """Async twin of :class:`_PublicOnly`."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        address = _public_address(host, [str(info[4][0]) for info in infos])
        return await super().connect_tcp(address, port, timeout, local_address, socket_options)


def http_client(options: ImageOptions) -> httpx.Client:
    """Return the client that downloads images under ``options`` (public addresses only)."""
    transport = httpx.HTTPTransport(trust_env=False)
    if not options.allow_private_urls:
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_PublicOnly()
        )
    return httpx.Client(transport=transport, timeout=options.download_timeout, trust_env=False)


def async_http_client(options: ImageOptions) -> httpx.AsyncClient:
    """Async form of :func:`http_client`."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    if not options.allow_private_urls:
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_AsyncPublicOnly()
        )
    return httpx.AsyncClient(transport=transport, timeout=options.download_timeout, trust_env=False)


def shown(url: str) -> str:
    """Return ``url`` as errors and spans show it, without userinfo or query.

    Signed URLs keep their credentials in the query; of a non-http(s) URL only the scheme shows.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"(a {parts.scheme or 'relative'}: URL)"
    hidden = "?[query hidden]" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", "")) + hidden


def _error(url: str, why: str) -> ImageError:
    return ImageError(
        f"Could not download image {shown(url)} to send it inline (Cloudflare cannot fetch URLs): "
        f"{why}. Download it yourself and pass the bytes or a path."
    )


def _failed(url: str, exc: Exception, options: ImageOptions) -> ImageError:
    if isinstance(exc, httpx.TimeoutException):
        return _error(url, f"it took longer than {options.download_timeout:g} s")
    if isinstance(exc.__cause__, NotPublicError):
        return ImageError(
            f"Refused to download image {shown(url)}: {exc.__cause__}. Image URLs may only "
            "point to public addresses, as they can come from documents or users; to fetch from a "
            "private network (your own server, the emulator), pass "
            "ImageOptions(allow_private_urls=True)."
        )
    return _error(url, str(exc) or type(exc).__name__)


def _next_hop(url: str, current: str, response: httpx.Response, hops: int) -> str:
    """Return where a redirect leads, or raise when it leads too far or nowhere."""
    location = response.headers.get("location")
    if not location:
        raise _error(url, f"HTTP {response.status_code} without a Location")
    if hops >= MAX_REDIRECTS:
        raise _error(url, f"more than {MAX_REDIRECTS} redirects")
    target: str = urljoin(current, str(location))
    if not target.lower().startswith(("http://", "https://")):
        raise _error(url, f"a redirect to {shown(target)}, which is not http(s)")
    return target


def _check(url: str, response: httpx.Response, options: ImageOptions) -> None:
    if response.status_code >= 400:
        raise _error(url, f"HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # never decoded: a few KiB of zstd or gzip can expand to gigabytes
        raise _error(url, f"the server sent it compressed ({encoding}) although asked not to")
    ctype = response.headers.get("content-type", "")
    if not ctype.startswith("image/"):
        raise _error(url, f"the server says it is {ctype or 'untyped'}")
    size = int(response.headers.get("content-length") or 0)
    if size > options.max_input_bytes:
        raise _error(url, f"it is {size} bytes, over the size limit")


class _Budget:
    """One download's limits: bytes and a deadline for the whole of it, redirects included."""

    def __init__(self, url: str, options: ImageOptions) -> None:
        self.url, self.options = url, options
        self.deadline = time.monotonic() + options.download_timeout
        self.data = bytearray()

    def left(self) -> float:
        """Return the seconds left, raising once there are none."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _error(self.url, f"it took longer than {self.options.download_timeout:g} s")
        return left

    def add(self, chunk: bytes) -> None:
        """Keep a chunk of the (undecoded) body, within the size limit and the deadline."""
        self.data += chunk
        if len(self.data) > self.options.max_input_bytes:
            raise _error(self.url, f"it is over the size limit ({self.options.max_input_bytes} B)")
        self.left()


# Ask for the bytes as they are stored: the body is never decoded (see _check).
_HEADERS = {"accept-encoding": "identity"}
# What a hostile URL or server can make httpx raise besides its own errors: an invalid URL or
# redirect target (httpx.InvalidURL), a host name IDNA refuses (UnicodeError is a ValueError).
_URL_ERRORS = (httpx.HTTPError, httpx.InvalidURL, ValueError)


def download(http: httpx.Client, url: str, options: ImageOptions) -> bytes:
    """Download an image's bytes (checked: status, type, size, addresses, redirects, time).

    The body is read as sent (``identity`` is asked for; a compressed one is refused) and never
    beyond ``max_input_bytes``; the whole download, redirects included, gets
    ``download_timeout`` seconds.

    Raises:
        ImageError: the download failed or was refused; the message says why and what to do.

    """
    budget, current, hops = _Budget(url, options), url, 0
    while True:
        try:
            with http.stream("GET", current, headers=_HEADERS, timeout=budget.left()) as response:
                if response.is_redirect:
                    current, hops = _next_hop(url, current, response, hops), hops + 1
                    continue
                _check(url, response, options)
                for chunk in response.iter_raw():
                    budget.add(chunk)
                return bytes(budget.data)
        except _URL_ERRORS as exc:
            raise _failed(url, exc, options) from exc


async def adownload(http: httpx.AsyncClient, url: str, options: ImageOptions) -> bytes:
    """Async form of :func:`download`."""
    budget, current, hops = _Budget(url, options), url, 0
    while True:
        try:
            async with http.stream(
                "GET", current, headers=_HEADERS, timeout=budget.left()
            ) as response:
                if response.is_redirect:
                    current, hops = _next_hop(url, current, response, hops), hops + 1
                    continue
                _check(url, response, options)
                async for chunk in response.aiter_raw():
                    budget.add(chunk)
                return bytes(budget.data)
        except _URL_ERRORS as exc:
            raise _failed(url, exc, options) from exc
