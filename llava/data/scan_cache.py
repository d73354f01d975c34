"""The start-up scan's result on disk, keyed by everything it depends on.

Scanning a 1M-sample mixture (image headers + tokenisation) takes many
minutes; its result -- the records, which samples are kept with their exact
lengths and image sizes, the problems found and every tokenised length --
depends only on:

- the data files (path, size, modification time) and the image folder,
- the tokenizer (class, its full `tokenizer.json` or vocabulary, BOS/EOS/UNK),
- the conversation template (its fields) and the image layout,
- `model_max_length` and whether text-only samples are refused (`require_images`),
- the source of the modules that compute it (so a code change never reuses an old scan).

These go into a key; the file is `<cache_dir>/scan-<hash of key>.bin`. The file
holds the key itself, the arrays of `record_store` and a CRC32 of every byte, so
a truncated or damaged file, or one written for another key, is detected,
reported with a warning and rebuilt. Files are written to a temporary name and
renamed, so a reader never sees half a file. Image files are not in the key:
replacing an image with one of another size after a scan needs a new scan
(delete the file, or touch the data file).

One process scans while the others wait by polling a lock file (a sleep loop,
never a collective, so no NCCL/gloo timeout applies however long the scan takes).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from llava.conversation import get_conversation_template
from llava.data.problems import DataProblem, ProblemLog
from llava.data.record_store import EntryTable, RecordStore
from llava.data.sources import data_files

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped whenever the file layout changes."""
MAGIC, END_MAGIC = b"LLAVASCN", b"LLAVAEND"
ENV_CACHE_DIR = "LLAVA_DATA_CACHE_DIR"
"""Environment variable that overrides the default cache folder."""
DISABLED = ("none", "off")
"""`--data_cache_dir` values that turn the cache off (every rank scans, nothing is kept)."""
SCAN_MODULES = ("llava.data.lengths", "llava.data.preprocess", "llava.data.headers", "llava.data.problems",
                "llava.data.sources", "llava.data.record_store", "llava.data.parallel_scan", "llava.conversation",
                "llava.anyres")
"""Modules whose source decides the scan's result; their bytes are part of the key."""
HEARTBEAT_S, STALE_S, POLL_S = 10.0, 300.0, 2.0
"""The scanner touches its lock every HEARTBEAT_S; a lock untouched for STALE_S is abandoned; waiters poll every POLL_S."""
_ALIGN = 64


class CacheError(Exception):
    """A cache file that must not be used; the message says why."""


def default_cache_dir() -> Path:
    """$LLAVA_DATA_CACHE_DIR, else `llava-next/data` under $XDG_CACHE_HOME (default ~/.cache)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llava-next" / "data"


def _digest(*parts) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes with the tokenizer's class, vocabulary, merges, added tokens, BOS/EOS/UNK."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    table = backend.to_str() if backend is not None else orjson.dumps(sorted(tokenizer.get_vocab().items()))
    # what tokenising a conversation depends on; not the pad token or side (train.py sets them, the check does not)
    special = [getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "unk_token",
                                                           "add_bos_token", "add_eos_token")]
    return _digest(type(tokenizer).__module__, type(tokenizer).__qualname__, table, special)


def code_fingerprint() -> str:
    """A hash of the source of `SCAN_MODULES`."""
    return _digest(*(Path(importlib.util.find_spec(name).origin).read_bytes() for name in SCAN_MODULES))


def cache_key(request) -> dict:
    """Everything the scan of `request` (a `parallel_scan.ScanRequest`) depends on, as plain JSON values."""
    files = []
    for path in data_files(request.data_path):
        st = os.stat(path)  # a missing file raises FileNotFoundError naming it
        files.append([os.path.realpath(path), st.st_size, st.st_mtime_ns])
    folder = request.image_folder
    return dict(
        format=FORMAT_VERSION, data=files, image_folder=os.path.abspath(folder) if folder else folder,
        tokenizer=tokenizer_fingerprint(request.tokenizer),
        template=[request.version, repr(get_conversation_template(request.version))],
        layout=repr(request.layout), max_length=int(request.max_length),
        require_images=bool(request.require_images), code=code_fingerprint(),
    )


def cache_path(cache_dir, key: dict) -> Path:
    return Path(cache_dir) / f"scan-{_digest(json.dumps(key, sort_keys=True))[:24]}.bin"


@dataclass
class ScanResult:
    """A scan as loaded from its file (arrays mapped read-only, shared through the page cache)."""

    records: RecordStore
    """Every record of the data, kept or not."""
    entries: EntryTable
    """The kept samples."""
    n_records: int
    all_lengths: np.ndarray
    """int32: the untruncated length of every sample that could be tokenised (for the check's report)."""
    header: dict
    """The file's header: key, writer (host, pid, rank), scan seconds, ..."""
    path: Path
    scanned: bool = False
    """True in the process that ran the scan; False where the file was loaded."""
    _problems: np.ndarray = field(default=None, repr=False)

    @property
    def problems(self) -> list[tuple]:
        """[(kind, detail, sample_id)] in the order the scan found them."""
        return [tuple(p) for p in orjson.loads(memoryview(self._problems))] if len(self._problems) else []

    def replay(self, log: ProblemLog):
        """Add the scan's problems to `log`: counted, or in strict mode the first one raised (naming its sample)."""
        for kind, detail, sample_id in self.problems:
            log.add(DataProblem(kind, detail, sample_id))


def write_scan(path: Path, key: dict, store: RecordStore, entries: EntryTable, problems: list,
               all_lengths, n_records: int, info: dict):
    """Write a scan atomically: a temporary file in the same folder, fsync, then rename over `path`."""
    arrays = {f"records.{k}": v for k, v in store.arrays().items()}
    arrays.update({f"entries.{k}": v for k, v in entries.arrays().items()})
    arrays["all_lengths"] = np.asarray(all_lengths, dtype=np.int32)
    arrays["problems"] = np.frombuffer(orjson.dumps(problems), dtype=np.uint8)
    layout, offset = {}, 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        arrays[name] = array
        layout[name] = [array.dtype.str, list(array.shape), offset]
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    header = json.dumps(dict(info, key=key, n_records=n_records, folders=store.folders, arrays=layout)).encode()
    prefix = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + header
    prefix += b"\0" * (-len(prefix) % _ALIGN)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    crc = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in [prefix] + [a.view(np.uint8).reshape(-1) for a in arrays.values()]:
                pad = b"\0" * (-len(chunk) % _ALIGN) if chunk is not prefix else b""
                for piece in (memoryview(chunk), pad):
                    fh.write(piece)
                    crc = zlib.crc32(piece, crc)
            fh.write(END_MAGIC + struct.pack("<I", crc))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_scan(path: Path, key: dict) -> ScanResult:
    """Map a scan file; raises `CacheError` if it is truncated, damaged or for another key."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(20)
        if len(head) < 20 or head[:8] != MAGIC:
            raise CacheError("not a scan cache file (bad magic)")
        version, header_len = struct.unpack("<IQ", head[8:])
        if version != FORMAT_VERSION:
            raise CacheError(f"format {version}, expected {FORMAT_VERSION}")
        if 20 + header_len + 12 > size:
            raise CacheError(f"truncated ({size} bytes)")
        header_bytes = fh.read(header_len)
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    body, trailer = mapped[: size - 12], bytes(mapped[size - 12 :])
    if trailer[:8] != END_MAGIC:
        raise CacheError(f"truncated or damaged ({size} bytes, no end marker)")
    crc = 0
    for start in range(0, len(body), 1 << 26):
        crc = zlib.crc32(memoryview(body[start : start + (1 << 26)]), crc)
    if struct.pack("<I", crc) != trailer[8:]:
        raise CacheError("damaged (checksum mismatch)")
    header = json.loads(header_bytes)
    if header.get("key") != key:
        raise CacheError("written for another key")
    base = 20 + header_len + (-(20 + header_len) % _ALIGN)
    arrays = {}
    for name, (dtype, shape, offset) in header["arrays"].items():
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) * dtype.itemsize
        arrays[name] = body[base + offset : base + offset + count].view(dtype).reshape(shape)
    sub = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}  # noqa: E731
    return ScanResult(RecordStore(folders=header["folders"], **sub("records.")), EntryTable(**sub("entries.")),
                      header["n_records"], arrays["all_lengths"], header, path, _problems=arrays["problems"])


def try_read(path: Path, key: dict, warn: bool = True) -> ScanResult | None:
    """The scan at `path`, or None when there is none or it is unusable (warned: it will be rebuilt)."""
    if not path.exists():
        return None
    try:
        return read_scan(path, key)
    except (CacheError, OSError, ValueError, KeyError, TypeError) as err:
        if warn:
            logger.warning("data: scan cache %s is unusable (%s); scanning again", path, err)
        return None


def writer_info() -> dict:
    """Who wrote a file: shown by the ranks that load it."""
    return dict(host=socket.gethostname(), pid=os.getpid(), rank=int(os.environ.get("RANK", "0") or 0))


def try_lock(lock: Path) -> bool:
    """Create the lock file if nobody holds it (atomic O_EXCL create); True if this process now holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(writer_info(), fh)
    return True


@contextmanager
def heartbeat(lock: Path):
    """Hold `lock` while the body runs: touch it every HEARTBEAT_S, remove it at the end (also on error)."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(lock)
            except OSError:
                pass

    thread = threading.Thread(target=beat, name="scan-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            lock.unlink()
        except FileNotFoundError:
            pass


def wait_unlocked(lock: Path):
    """Sleep until `lock` is gone; a lock nobody touched for STALE_S is removed (its scanner died)."""
    started, said = time.monotonic(), 0.0
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_S:
            logger.warning("data: removing abandoned scan lock %s (untouched for %.0f s)", lock, age)
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            return
        waited = time.monotonic() - started
        if waited >= said:
            try:
                holder = lock.read_text(errors="replace")
            except OSError:
                holder = "?"
            logger.info("data: waiting for the scan held by %s (%s), %.0f s so far", holder, lock, waited)
            said = max(60.0, 2 * said)
        time.sleep(POLL_S)
