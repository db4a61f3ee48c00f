"""Regenerate the sample images in examples/images (drawn with Pillow; no licence issues)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent / "images"


def main() -> None:
    """Draw the four sample images."""
    HERE.mkdir(exist_ok=True)
    img = Image.new("RGB", (640, 480), (250, 250, 245))
    ImageDraw.Draw(img).rectangle((170, 90, 470, 390), fill=(210, 30, 40))
    img.save(HERE / "red-square.png")

    img = Image.new("RGB", (800, 600), (245, 245, 250))
    ImageDraw.Draw(img).ellipse((150, 50, 650, 550), fill=(30, 70, 200))
    img.save(HERE / "blue-circle.jpg", quality=85)

    img = Image.new("RGB", (900, 600))
    draw = ImageDraw.Draw(img)
    for y in range(600):  # a sunset: orange sky fading to purple, a dark sea
        t = y / 400
        colour = (
            (int(250 - 120 * t), int(150 - 110 * t), int(60 + 80 * t)) if y < 400 else (20, 30, 60)
        )
        draw.line((0, y, 900, y), fill=colour)
    draw.ellipse((380, 300, 520, 440), fill=(255, 200, 60))
    draw.rectangle((0, 400, 900, 600), fill=(20, 30, 60))
    img.save(HERE / "sunset.jpg", quality=85)

    img = Image.new("RGBA", (500, 500), (0, 0, 0, 0))
    ImageDraw.Draw(img).polygon([(250, 40), (460, 440), (40, 440)], fill=(40, 170, 70, 255))
    img.save(HERE / "green-triangle.webp")


if __name__ == "__main__":
    main()
