"""Image sizes from file headers, without decoding pixels.

`PIL.Image.open` parses only the header, so a size costs one small read and
tens of microseconds of Python. On local disks that is about a minute for
665K images on one core; on network filesystems the time goes into waiting for
each file, so a thread pool overlaps those waits (threads, not processes: no
re-import of the training script in every worker, no fork of a process whose
tokenizer threads may hold locks).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

POOL_THRESHOLD = 256
"""Below this many distinct paths the files are read in the calling thread."""


def image_header(path: str, decode: bool = False):
    """`(height, width)` of the image at `path`, or the problem kind when it cannot be read.

    Kinds: `missing_image` (no such file), `empty_image` (0 bytes),
    `corrupt_image` (no readable image header), and with `decode` (the pixels
    are decoded too, as training will) `decode_error` (truncated or corrupt
    data after a valid header).
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty_image"
    except OSError:
        return "missing_image"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if decode and not _decodes(image):
                return "decode_error"
    except Exception:  # PIL raises many types for garbage (UnidentifiedImageError, SyntaxError, ...)
        return "corrupt_image"
    if width <= 0 or height <= 0:
        return "corrupt_image"
    return int(height), int(width)


def _decodes(image) -> bool:
    """Whether the whole pixel stream decodes (PIL decodes in C and releases the GIL, so threads overlap).

    A JPEG is decoded at 1/8 scale (`draft`): libjpeg still reads every
    entropy-coded block, so a truncated or corrupt stream fails the same way,
    at about half the cost. Other formats decode in full.
    """
    try:
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception:  # OSError "image file is truncated", SyntaxError, zlib errors, ...
        return False
    return True


def default_workers() -> int:
    """Threads that wait on file reads: 16, fewer when several ranks of a node scan at once."""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(2, 16 // max(per_node, 1))


def read_headers(paths, workers: int | None = None, progress=None, decode: bool = False) -> dict:
    """`{path: (height, width) or problem kind}` for each distinct path.

    `progress` (a callable taking a count) is told as results arrive, for a
    progress bar. `decode` also decodes every image's pixels (the preflight
    check's default: it catches files truncated after a valid header).
    """
    unique = list(dict.fromkeys(paths))
    workers = default_workers() if workers is None else workers
    out = {}
    if workers <= 1 or len(unique) < POOL_THRESHOLD:
        for path in unique:
            out[path] = image_header(path, decode)
            if progress:
                progress(1)
        return out
    blocks = [unique[i : i + 128] for i in range(0, len(unique), 128)]  # one future per 128 files
    with ThreadPoolExecutor(workers) as pool:
        for block, results in zip(blocks, pool.map(_read_block, blocks, [decode] * len(blocks))):
            out.update(zip(block, results))
            if progress:
                progress(len(block))
    return out


def _read_block(paths, decode):
    return [image_header(path, decode) for path in paths]
