"""Draw docs/img/anyres.png: one 640x480 photo through LLaVA-NeXT's anyres tiling.

Every number in the picture comes from `llava.anyres`, so the figure cannot
drift from the code. Run: `python docs/img/anyres.py` (writes next to itself).
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from llava.anyres import ImageLayout, default_grid_pinpoints, resize_for_tiles, select_best_resolution, to_pinpoint_tuple
from llava.anyres import unpad_bounds

TILE, PATCH = 336, 14
IMAGE_HW = (480, 640)  # a VGA photo, (height, width)
BG, INK, TILE_RED, PAD_GREY, KEEP, NEWLINE = "white", "#222222", "#d62728", "#d0d0d0", "#9ecae1", "#fdae6b"


def font(size):
    return ImageFont.load_default(size=size)


def photo(hw):
    """A synthetic landscape, so the figure needs no downloaded picture."""
    h, w = hw
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):  # sky gradient, then grass
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), 235) if t < 0.62 else (70, 150, 70))
    draw.ellipse([w * 0.68, h * 0.12, w * 0.82, h * 0.31], fill=(255, 210, 60))
    draw.polygon([(0, h * 0.62), (w * 0.3, h * 0.3), (w * 0.6, h * 0.62)], fill=(120, 110, 100))
    draw.rectangle([w * 0.12, h * 0.7, w * 0.3, h * 0.9], fill=(180, 60, 50))
    return img


def main(out=Path(__file__).with_name("anyres.png")):
    layout = ImageLayout(TILE, PATCH, to_pinpoint_tuple(default_grid_pinpoints(TILE)))
    canvas_hw = select_best_resolution(IMAGE_HW, layout.grid_pinpoints)
    fit_hw = resize_for_tiles(IMAGE_HW, canvas_hw)
    rows, cols = layout.grid_shape(IMAGE_HW)
    n = layout.patches_per_side
    top, keep_h, left, keep_w = unpad_bounds(IMAGE_HW, (rows * n, cols * n))
    tokens = layout.num_tokens(IMAGE_HW)

    fig = Image.new("RGB", (1560, 760), BG)
    d = ImageDraw.Draw(fig)
    title, label, small = font(30), font(20), font(17)
    d.text((30, 20), "anyres: a 640x480 image with CLIP-L/336 and the default grid pinpoints", fill=INK, font=title)

    # 1. the input image, half scale
    src = photo(IMAGE_HW)
    x0, y0 = 30, 120
    fig.paste(src.resize((IMAGE_HW[1] // 2, IMAGE_HW[0] // 2)), (x0, y0))
    d.text((x0, y0 - 36), f"1. input {IMAGE_HW[1]}x{IMAGE_HW[0]} (w x h)", fill=INK, font=label)
    base = src.resize((TILE // 2, TILE // 2))  # the base tile squashes the whole image
    fig.paste(base, (x0, y0 + 330))
    d.text((x0, y0 + 300), f"base tile: whole image -> {TILE}x{TILE}", fill=INK, font=label)
    d.text((x0 + TILE // 2 + 12, y0 + 340), f"{n}x{n} = {n * n}\npatch tokens", fill=INK, font=small)

    # 2. the best canvas, 3/4 scale: image fitted, padding, tile grid
    s = 0.75
    cx, cy = 420, 120
    ch, cw = int(canvas_hw[0] * s), int(canvas_hw[1] * s)
    d.rectangle([cx, cy, cx + cw, cy + ch], fill=PAD_GREY)
    fh, fw = int(fit_hw[0] * s), int(fit_hw[1] * s)
    px, py = cx + (cw - fw) // 2, cy + (ch - fh) // 2
    fig.paste(src.resize((fw, fh)), (px, py))
    for r in range(rows + 1):
        d.line([(cx, cy + r * ch // rows), (cx + cw, cy + r * ch // rows)], fill=TILE_RED, width=4)
    for c in range(cols + 1):
        d.line([(cx + c * cw // cols, cy), (cx + c * cw // cols, cy + ch)], fill=TILE_RED, width=4)
    d.text((cx, cy - 36), f"2. best canvas {canvas_hw[1]}x{canvas_hw[0]}: {rows}x{cols} tiles", fill=INK, font=label)
    d.text((cx + 8, cy + 8), "padding", fill=INK, font=small)
    d.text((cx, cy + ch + 10), f"image resized to {fit_hw[1]}x{fit_hw[0]}, centred; grey = padding", fill=INK, font=small)

    # 3. the stitched feature grid: padding rows removed, one newline per kept row
    cell = 9
    gx, gy = 990, 120
    for i in range(rows * n):
        for j in range(cols * n + 1):
            kept = top <= i < top + keep_h and left <= j < left + keep_w
            if j == cols * n:
                colour = NEWLINE if top <= i < top + keep_h else BG
            else:
                colour = KEEP if kept else PAD_GREY
            d.rectangle([gx + j * cell, gy + i * cell, gx + (j + 1) * cell - 2, gy + (i + 1) * cell - 2], fill=colour)
    for r in range(rows + 1):
        d.line([(gx, gy + r * n * cell), (gx + cols * n * cell, gy + r * n * cell)], fill=TILE_RED, width=2)
    for c in range(cols + 1):
        d.line([(gx + c * n * cell, gy), (gx + c * n * cell, gy + rows * n * cell)], fill=TILE_RED, width=2)
    d.text((gx, gy - 36), f"3. features {rows * n}x{cols * n} patches, unpadded", fill=INK, font=label)
    gy2 = gy + rows * n * cell + 12
    d.text((gx, gy2), f"blue: kept {keep_h} rows x {keep_w} cols; grey: padding, dropped", fill=INK, font=small)
    d.text((gx, gy2 + 24), "orange: image_newline after each kept row", fill=INK, font=small)

    d.text(
        (30, 700),
        f"tokens = {n * n} (base) + {keep_h} x ({keep_w} + 1 newline) = {tokens}",
        fill=INK,
        font=title,
    )
    fig.save(out)
    return out


if __name__ == "__main__":
    print(main())
