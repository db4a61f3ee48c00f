"""Image handling: every accepted kind of source, and every rejected one."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image as PILImage

from llamavision import ImageError, ImageOptions, RemoteImage, ResolvedImage, resolve_image
from llamavision.images import compose_grid, image_source


def encode(img: PILImage.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def decoded(resolved: ResolvedImage) -> PILImage.Image:
    return PILImage.open(io.BytesIO(resolved.data))


RED = PILImage.new("RGB", (64, 32), (200, 10, 10))


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")],
)
def test_small_supported_images_pass_through_unchanged(fmt: str, mime: str) -> None:
    data = encode(RED, fmt)
    resolved = resolve_image(data)
    assert isinstance(resolved, ResolvedImage)
    assert (resolved.data, resolved.mime_type, resolved.width, resolved.height) == (
        data,
        mime,
        64,
        32,
    )


def test_type_comes_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    lying = tmp_path / "photo.png"
    lying.write_bytes(encode(RED, "JPEG"))
    resolved = resolve_image(lying)
    assert isinstance(resolved, ResolvedImage) and resolved.mime_type == "image/jpeg"
    assert resolve_image(str(lying)) == resolved


def test_gif_sends_its_first_frame_as_png_or_jpeg() -> None:
    frames = [PILImage.new("RGB", (20, 20), c) for c in ((0, 0, 255), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    resolved = resolve_image(out.getvalue())
    assert isinstance(resolved, ResolvedImage) and resolved.mime_type in ("image/jpeg", "image/png")
    _, g, b = decoded(resolved).convert("RGB").getpixel((10, 10))  # type: ignore[misc]
    assert b > 200 and g < 50


def test_large_images_are_downscaled_to_1120_and_reencoded() -> None:
    big = PILImage.new("RGB", (4000, 3000), (10, 120, 200))
    resolved = resolve_image(encode(big, "PNG"))
    assert isinstance(resolved, ResolvedImage)
    assert (resolved.width, resolved.height) == (1120, 840)
    assert resolved.mime_type == "image/jpeg"
    assert decoded(resolved).size == (1120, 840)


def test_transparency_is_kept_as_png() -> None:
    big = PILImage.new("RGBA", (2000, 500), (0, 0, 0, 0))
    resolved = resolve_image(encode(big, "PNG"))
    assert isinstance(resolved, ResolvedImage) and resolved.mime_type == "image/png"
    assert decoded(resolved).mode == "RGBA" and resolved.width == 1120


def test_downscaling_is_configurable_and_can_be_switched_off() -> None:
    big = encode(PILImage.new("RGB", (1600, 800)), "JPEG")
    small = resolve_image(big, ImageOptions(max_side=560))
    assert isinstance(small, ResolvedImage) and (small.width, small.height) == (560, 280)
    kept = resolve_image(big, ImageOptions(max_side=None))
    assert isinstance(kept, ResolvedImage) and kept.data == big
    raw = resolve_image(big, ImageOptions(reencode=False))
    assert isinstance(raw, ResolvedImage) and raw.data == big and raw.width == 1600


def test_exif_orientation_is_applied() -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(PILImage.new("RGB", (80, 40), (0, 200, 0)), "JPEG", exif=exif.tobytes())
    resolved = resolve_image(data)
    assert isinstance(resolved, ResolvedImage)
    assert (resolved.width, resolved.height) == (40, 80)


def test_every_source_kind(tmp_path: Path) -> None:
    data = encode(RED, "PNG")
    path = tmp_path / "red.png"
    path.write_bytes(data)
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in (data, bytearray(data), path, str(path), io.BytesIO(data), data_url):
        resolved = resolve_image(source)  # type: ignore[arg-type]
        assert isinstance(resolved, ResolvedImage) and resolved.data == data, source
    from_pil = resolve_image(RED)
    assert isinstance(from_pil, ResolvedImage) and from_pil.mime_type == "image/jpeg"
    assert resolve_image("https://example.com/cat.jpg") == RemoteImage(
        "https://example.com/cat.jpg"
    )
    assert resolve_image(from_pil) is from_pil


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"%PDF-1.7 ...", "a PDF document"),
        (b"BM\x00\x00\x00\x00", "a BMP image"),
        (b"<svg xmlns=...", "an SVG drawing"),
        (b"\x00\x00\x00\x18ftypheic", "a HEIC image"),
        (b"", "an empty file"),
        (b"hello world", "unrecognised data"),
    ],
)
def test_unsupported_types_are_named(data: bytes, says: str) -> None:
    with pytest.raises(ImageError, match=says) as info:
        resolve_image(data)
    assert "JPEG, PNG, WebP or GIF" in str(info.value)


def test_truncated_image_is_reported() -> None:
    data = encode(PILImage.new("RGB", (2000, 2000)), "PNG")[:200]
    with pytest.raises(ImageError, match="cannot be decoded"):
        resolve_image(data)


def test_size_cap_applies_to_every_source(tmp_path: Path) -> None:
    data = encode(RED, "PNG")
    options = ImageOptions(max_input_bytes=len(data) - 1)
    path = tmp_path / "red.png"
    path.write_bytes(data)
    data_url = "data:image/png;base64," + base64.b64encode(data * 2).decode()
    for source in (data, path, io.BytesIO(data), data_url):
        with pytest.raises(ImageError, match=r"over the .* limit"):
            resolve_image(source, options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("/no/such/file.png", "Cannot read image file"),
        ("ftp://example.com/a.png", "http\\(s\\) or data URLs"),
        ("data:image/png,rawtext", "base64"),
        ("data:image/png;base64,!!!", "invalid base64"),
        (12, "Cannot use a int"),
        (io.StringIO("text"), "binary mode"),
    ],
)
def test_bad_sources(source: object, says: str) -> None:
    with pytest.raises(ImageError, match=says):
        resolve_image(source)  # type: ignore[arg-type]


def test_grid_composes_labelled_images_within_budget() -> None:
    red = resolve_image(encode(PILImage.new("RGB", (900, 900), (255, 0, 0)), "PNG"))
    blue = resolve_image(encode(PILImage.new("RGB", (900, 600), (0, 0, 255)), "PNG"))
    assert isinstance(red, ResolvedImage) and isinstance(blue, ResolvedImage)
    grid = compose_grid([red, blue])
    assert grid.width <= 1120 and grid.height <= 1120
    img = decoded(grid).convert("RGB")
    left = img.getpixel((grid.width // 4, grid.height // 2))
    right = img.getpixel((3 * grid.width // 4, grid.height // 2))
    assert left[0] > 200 and left[2] < 60  # type: ignore[index]
    assert right[2] > 200 and right[0] < 60  # type: ignore[index]
    label_strip = img.crop((0, 0, grid.width // 2, 24)).convert("L")
    assert label_strip.getextrema()[0] < 100  # dark label text is drawn above each image


@pytest.mark.parametrize("url", ["/etc/hosts", "file:///etc/hosts", "C:\\photo.jpg", "ftp://x/y"])
def test_a_url_field_is_never_read_from_the_disk(url: str) -> None:
    with pytest.raises(ImageError, match="never read from this machine's disk"):
        image_source(url=url)
    assert image_source(url="https://example.com/a.png") == "https://example.com/a.png"
