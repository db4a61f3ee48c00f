"""Turn any image a user has into what the model should receive.

The model tiles images at 560 px and sees at most 1120 px per side, so larger images are
downscaled before upload. The real type is sniffed from the bytes, never from a file name.
Nothing here does network I/O: http(s) URLs become :class:`RemoteImage` and the client decides
whether to pass them through or to download them (Cloudflare cannot fetch URLs).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import (
    GifImagePlugin,
    ImageDraw,
    ImageFont,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)
from PIL import Image as PILImage

from llamavision.errors import ImageError

MODEL_MAX_SIDE = 1120
"""Longest side, in pixels, worth sending to Llama 3.2 Vision (two 560 px tiles)."""

_MAGIC: tuple[tuple[tuple[tuple[bytes, int], ...], str], ...] = (
    (((b"\xff\xd8\xff", 0),), "image/jpeg"),
    (((b"\x89PNG\r\n\x1a\n", 0),), "image/png"),
    (((b"GIF87a", 0),), "image/gif"),
    (((b"GIF89a", 0),), "image/gif"),
    (((b"RIFF", 0), (b"WEBP", 8)), "image/webp"),
)
# Each sniffed type is decoded by its own Pillow plugin only: attacker bytes never reach the
# other decoders (TIFF, BMP, ...). Calling the plugin also skips Image.open's bomb warning;
# the pixel cap below is ours, checked before anything is decoded.
_DECODERS: dict[str, Callable[[IO[bytes]], PILImage.Image]] = {
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/png": PngImagePlugin.PngImageFile,
    "image/gif": GifImagePlugin.GifImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}
_KNOWN_OTHERS: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"BM", 0, "a BMP image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"ftypheic", 4, "a HEIC image"),
    (b"ftypavif", 4, "an AVIF image"),
    (b"<svg", 0, "an SVG drawing"),
    (b"<?xml", 0, "an XML document (SVG?)"),
)
SUPPORTED = "JPEG, PNG, WebP or GIF"


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """How images are prepared before upload.

    Attributes:
        max_side: downscale so the longer side is at most this many pixels; ``None`` keeps
            the original size.
        max_input_bytes: refuse inputs (files, downloads, data URLs) larger than this.
        reencode: re-encode images that were rotated or resized (JPEG, or PNG where there is
            transparency). With ``False`` the original bytes are sent whenever the type is
            supported, even if they are larger than needed.
        jpeg_quality: quality of re-encoded JPEGs.
        max_pixels: refuse images that would decode to more pixels than this (read from the
            header, before decoding). JPEGs count at the reduced scale they are decoded at
            when downscaling, so large photos pass; a 13000 x 13000 PNG does not.
        download_timeout: seconds allowed for a whole download of a remote image (Cloudflare,
            or a grid), redirects included.
        allow_private_urls: let image downloads reach loopback, private, link-local and other
            non-public addresses. Off by default: image URLs can come from documents and
            users, and fetching them from inside a network is a request forgery hole.

    """

    max_side: int | None = MODEL_MAX_SIDE
    max_input_bytes: int = 20 * 1024 * 1024
    reencode: bool = True
    jpeg_quality: int = 85
    max_pixels: int = 40_000_000
    download_timeout: float = 20.0
    allow_private_urls: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """Image bytes ready to send inline, with their sniffed type and size."""

    data: bytes
    mime_type: str
    width: int
    height: int

    def base64(self) -> str:
        """Return the bytes base64-encoded."""
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """Return the image as a ``data:`` URL."""
        return f"data:{self.mime_type};base64,{self.base64()}"

    def __repr__(self) -> str:
        return (
            f"ResolvedImage({self.mime_type}, {self.width}x{self.height}, {len(self.data)} bytes)"
        )


@dataclass(frozen=True, slots=True)
class RemoteImage:
    """An http(s) image URL, passed to providers that fetch URLs themselves."""

    url: str


ImageSource = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | IO[bytes]
    | PILImage.Image
    | ResolvedImage
    | RemoteImage
)


def image_source(
    *,
    url: str | None = None,
    base64_data: str | None = None,
    path: str | os.PathLike[str] | None = None,
    data: bytes | None = None,
) -> ImageSource:
    """Pick the image source out of a framework's image block fields (first one set wins).

    A ``url`` must be an http(s) or a ``data:`` URL: a url field is never read from this
    machine's disk, since where URLs come from users (a chat app taking image links) that would
    let anyone have any image on the server described. Local files come in as ``path``.

    Raises:
        ImageError: no field is set, ``base64_data`` is not valid base64, or ``url`` is not
            an http(s) or data URL.

    """
    if data:
        return data
    if base64_data:
        if base64_data.startswith("data:"):
            return base64_data
        try:
            return base64.b64decode(base64_data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"Image block holds invalid base64: {exc}.") from exc
    if url:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in ("http", "https", "data"):
            raise ImageError(
                f"The image url {url[:80]!r} is not an http(s) or data: URL. A url is never "
                "read from this machine's disk; to send a local file, pass its path: "
                "local_image_block(path) in LangChain, ImageBlock(path=...) in LlamaIndex, "
                "Message.user(text, image=path) in the core."
            )
        return url
    if path:
        return Path(path)
    raise ImageError("Image block has no url, base64 data, path or bytes: give one of them.")


def sniff_mime(data: bytes) -> str | None:
    """Return the MIME type of supported image bytes, or ``None``."""
    for signature, mime in _MAGIC:
        if all(data[at : at + len(magic)] == magic for magic, at in signature):
            return mime
    return None


def _describe(data: bytes) -> str:
    head = data[:16].lstrip()
    for magic, offset, name in _KNOWN_OTHERS:
        if head[offset : offset + len(magic)].lower() == magic.lower():
            return name
    if not data:
        return "an empty file"
    return "unrecognised data"  # never its bytes: the file may be anything


def _too_large(size: int, limit: int, origin: str) -> ImageError:
    return ImageError(
        f"Image {origin} is {size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB limit. "
        "Shrink it first, or raise ImageOptions.max_input_bytes."
    )


def resolve_image(
    source: ImageSource, options: ImageOptions | None = None
) -> ResolvedImage | RemoteImage:
    """Read, validate and prepare an image from any supported source.

    Args:
        source: a path, bytes, a binary file object, a PIL image, an http(s) URL, a data URL,
            or an already resolved image.
        options: size and encoding settings; defaults to :class:`ImageOptions`.

    Returns:
        A :class:`ResolvedImage`, or a :class:`RemoteImage` for http(s) URLs (no I/O here).

    Raises:
        ImageError: the source is unreadable, too large, or not a JPEG, PNG, WebP or GIF.

    """
    options = options or ImageOptions()
    if isinstance(source, (ResolvedImage, RemoteImage)):
        return source
    if isinstance(source, PILImage.Image):
        return _from_pil(source, options)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return load_image_bytes(bytes(source), options, origin="(bytes)")
    if isinstance(source, str) and (source.startswith("data:") or "://" in source[:12]):
        return _from_url(source, options)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), options)
    if hasattr(source, "read"):
        data = source.read(options.max_input_bytes + 1)
        if not isinstance(data, bytes):
            raise ImageError("Image file objects must be opened in binary mode ('rb').")
        if len(data) > options.max_input_bytes:
            raise _too_large(len(data), options.max_input_bytes, "(file object)")
        return load_image_bytes(data, options, origin="(file object)")
    raise ImageError(
        f"Cannot use a {type(source).__name__} as an image: pass a path, bytes, a binary file, "
        "a PIL image, an http(s) URL or a data URL."
    )


def _from_url(url: str, options: ImageOptions) -> ResolvedImage | RemoteImage:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return RemoteImage(url)
    if scheme != "data":
        raise ImageError(
            f"Image URLs must be http(s) or data URLs, not {scheme}:. "
            "Pass a local file as a path instead."
        )
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ImageError("Image data URLs must be base64-encoded: data:image/png;base64,...")
    if len(payload) * 3 // 4 > options.max_input_bytes:
        raise _too_large(len(payload) * 3 // 4, options.max_input_bytes, "(data URL)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"Image data URL holds invalid base64: {exc}.") from exc
    return load_image_bytes(data, options, origin="(data URL)")


def read_file(path: Path, limit: int) -> bytes:
    """Read a file of at most ``limit`` bytes: checked by size first, and read no further.

    Raises:
        ImageError: the file is over the limit.
        OSError: the file cannot be read.

    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise _too_large(size, limit, repr(str(path)))
        data = f.read(size + 1)  # asks for no bigger a buffer than the file
        if len(data) > size:  # it grew since: read on, never past the limit
            data += f.read(limit + 1 - len(data))
    if len(data) > limit:
        raise _too_large(len(data), limit, repr(str(path)))
    return data


def _from_path(path: Path, options: ImageOptions) -> ResolvedImage:
    try:
        data = read_file(path, options.max_input_bytes)
    except OSError as exc:
        raise ImageError(
            f"Cannot read image file {str(path)!r}: {exc.strerror or exc}. Check the path."
        ) from exc
    return load_image_bytes(data, options, origin=repr(str(path)))


def open_image(
    data: bytes, options: ImageOptions | None = None, *, origin: str = "(bytes)"
) -> tuple[PILImage.Image, str]:
    """Open image bytes with the decoder of their sniffed type only; no pixel is decoded yet.

    Returns:
        The lazily decoded image and its MIME type.

    Raises:
        ImageError: the bytes are too many, not a supported image, or their header is broken.

    """
    options = options or ImageOptions()
    if len(data) > options.max_input_bytes:
        raise _too_large(len(data), options.max_input_bytes, origin)
    mime = sniff_mime(data)
    if mime is None:
        raise ImageError(
            f"Image {origin} is {_describe(data)}, not a supported image: use {SUPPORTED}."
        )
    try:
        return _DECODERS[mime](io.BytesIO(data)), mime
    except Exception as exc:
        raise _undecodable(origin, mime, exc) from exc


def load_image_bytes(
    data: bytes, options: ImageOptions | None = None, *, origin: str = "(bytes)"
) -> ResolvedImage:
    """Validate and prepare encoded image bytes (see :func:`resolve_image`).

    Raises:
        ImageError: the bytes are too many, not a supported image, or cannot be decoded.

    """
    options = options or ImageOptions()
    img, mime = open_image(data, options, origin=origin)
    try:
        width, height = img.size
        rotated = _orientation(img) not in (None, 1)
        fits = options.max_side is None or max(width, height) <= options.max_side
        if not options.reencode or (fits and not rotated and mime != "image/gif"):
            _check_pixels(img, options, origin)
            img.load()  # decode once, so that a truncated file fails here, not upstream
            return ResolvedImage(data, mime, width, height)
        if options.max_side is not None:
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale (DCT scaling) while staying at
            # least max_side: a 12 MP photo is decoded as 3 MP (a no-op for other formats).
            img.draft("RGB", (options.max_side, options.max_side))
        _check_pixels(img, options, origin)
        return _encode(_prepare(img, options), options)
    except ImageError:
        raise
    except Exception as exc:  # a broken file or EXIF block fails this image, typed, nothing more
        raise _undecodable(origin, mime, exc) from exc


def _undecodable(origin: str, mime: str, exc: Exception) -> ImageError:
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ImageError(f"Image {origin} looks like {mime} but cannot be decoded ({why}).")


def _check_pixels(img: PILImage.Image, options: ImageOptions, origin: str) -> None:
    """Refuse an image that would decode to more than ``max_pixels`` (a decompression bomb)."""
    width, height = img.size
    if width * height > options.max_pixels:
        raise ImageError(
            f"Image {origin} is {width}x{height} pixels, more than max_pixels "
            f"({options.max_pixels:,}) allows to decode; the model sees at most "
            f"{MODEL_MAX_SIDE} px a side. Shrink it first, or raise ImageOptions.max_pixels."
        )


def _orientation(img: PILImage.Image) -> int | None:
    try:
        value = img.getexif().get(0x0112)
        return value if isinstance(value, int) else None
    except Exception:  # a broken EXIF block must not make the image unusable
        return None


def _prepare(img: PILImage.Image, options: ImageOptions) -> PILImage.Image:
    """Take the first frame, downscale (cheaply, by JPEG draft when possible), then rotate."""
    img.seek(0)
    if options.max_side is not None:
        # thumbnail keeps the aspect ratio; as the bound is square, rotating afterwards gives
        # the same result on fewer pixels.
        img.thumbnail((options.max_side, options.max_side))
    else:
        img.load()
    return ImageOps.exif_transpose(img)


def _has_alpha(img: PILImage.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _encode(img: PILImage.Image, options: ImageOptions) -> ResolvedImage:
    out = io.BytesIO()
    if _has_alpha(img):
        img.save(out, format="PNG", optimize=False)
        mime = "image/png"
    else:
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(out, format="JPEG", quality=options.jpeg_quality)
        mime = "image/jpeg"
    return ResolvedImage(out.getvalue(), mime, img.width, img.height)


def _from_pil(img: PILImage.Image, options: ImageOptions) -> ResolvedImage:
    try:
        return _encode(_prepare(img.copy(), options), options)
    except Exception as exc:
        raise ImageError(
            f"The PIL image cannot be prepared ({type(exc).__name__}: {exc})."
        ) from exc


def compose_grid(images: list[ResolvedImage], options: ImageOptions | None = None) -> ResolvedImage:
    """Compose several images into one labelled grid ("Image 1", "Image 2", ...).

    The grid fits within ``options.max_side`` (default 1120 px) so that the model, trained on
    one image per conversation, can still compare several.
    """
    options = options or ImageOptions()
    budget = options.max_side or MODEL_MAX_SIDE
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    label_h, pad = max(16, budget // 40), 4
    cell_w = budget // cols
    cell_h = budget // rows - label_h
    font = _font(label_h - 4)
    tiles = []
    for resolved in images:
        tile = PILImage.open(io.BytesIO(resolved.data)).convert("RGBA")
        tile.thumbnail((cell_w - 2 * pad, cell_h - 2 * pad))
        tiles.append(tile)
    row_heights = [
        max(t.height for t in tiles[r * cols : (r + 1) * cols]) + label_h + 2 * pad
        for r in range(rows)
    ]
    canvas = PILImage.new("RGB", (cols * cell_w, sum(row_heights)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = c * cell_w + pad, sum(row_heights[:r]) + pad
        draw.text((x, y), f"Image {i + 1}", fill="black", font=font)
        canvas.paste(tile, (x, y + label_h), tile)
    return _encode(canvas, options)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()
