"""Scan a dataset once per job, on every core, and give each rank the cached result.

`load_or_scan` is what the training dataset and `python -m llava.data.check` call:

1. compute the cache key (`scan_cache.cache_key`: data files, tokenizer, template, layout, ...);
2. a valid cache file -> map it and return (seconds, whatever the data size);
3. otherwise take the lock file; the process that gets it scans, the others sleep
   in a polling loop until the lock is gone (no collective: no distributed timeout),
   then load the file it wrote.

A large scan runs in a child process (`python -m llava.data.parallel_scan SPEC`):
the Python dicts of a million parsed samples die with it instead of staying in
the rank's memory, and its worker processes are forked from a process that has
not started any tokenizer or CUDA threads. The workers scan chunks of
`CHUNK` records with `lengths.scan_records` (headers through a few threads,
tokenisation single-threaded per process), and the parent shows one progress
bar with an ETA. Problems are merged in chunk order, so the result does not
depend on the number of processes.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.data import scan_cache
from llava.data.lengths import scan_records
from llava.data.problems import ProblemLog
from llava.data.record_store import EntryTable, RecordStore
from llava.data.sources import data_files, load_records

logger = logging.getLogger(__name__)

CHUNK = 2048
"""Records per task: large enough for batched tokenisation, small enough for a smooth ETA."""
HEADER_THREADS = 4
"""Threads reading image headers inside each scanning process (they wait on I/O, not on the CPU)."""
CHILD_BYTES = 32 << 20
"""Data files at least this large (about 18K LLaVA samples) are scanned in a child process."""


@dataclass
class ScanRequest:
    """What to scan and how: the inputs the scan's result depends on (all of them go into the cache key)."""

    data_path: str
    """A .json, .jsonl or .yaml mixture (`sources.load_records`)."""
    image_folder: str | None
    """Folder that relative image paths are joined to."""
    tokenizer: Any
    version: str
    """Conversation template name."""
    layout: Any
    """`anyres.ImageLayout`, or None for text-only data."""
    max_length: int
    require_images: bool = False
    """Text-only samples are a problem (the LLM is frozen)."""


class _Collect(ProblemLog):
    """Keeps every problem in order, for the cache (never strict: strictness is applied when replaying)."""

    def __init__(self):
        super().__init__(strict=False)
        self.items = []

    def add(self, problem):
        super().add(problem)
        self.items.append((problem.kind, problem.detail, problem.sample_id))


def scan_chunk(store: RecordStore, request: ScanRequest, start: int, stop: int):
    """Scan records [start, stop): (EntryTable with global indices, problems, tokenised lengths)."""
    records = [store[i] for i in range(start, stop)]
    problems, lengths = _Collect(), []
    entries = scan_records(records, request.tokenizer, request.version, request.layout, request.max_length,
                           problems, workers=HEADER_THREADS, all_lengths=lengths,
                           require_images=request.require_images)
    table = EntryTable.from_entries(entries)
    table.index += start
    return table, problems.items, lengths


_WORKER: dict = {}
"""The store and request of a forked scanning process (set once by `_init_worker`; a pool needs a global)."""


def _init_worker(store, request):
    _WORKER.update(store=store, request=request)


def _scan_task(bounds):
    return scan_chunk(_WORKER["store"], _WORKER["request"], *bounds)


def default_processes() -> int:
    """Every core this process may use: the other ranks of the node wait while one scans."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scan_to_file(request: ScanRequest, path: Path, key: dict, processes: int, progress: bool, writer: dict):
    """Load the records, scan them with `processes` processes and write the cache file at `path`."""
    started = time.perf_counter()
    loading = _Collect()  # bad JSONL lines
    records = load_records(request.data_path, request.image_folder, loading)
    store = RecordStore.from_records(_drain(records))  # each parsed dict is freed once encoded
    gc.collect()
    bounds = [(s, min(s + CHUNK, len(store))) for s in range(0, len(store), CHUNK)]
    tables, problems, lengths = [], list(loading.items), []
    processes = max(1, min(processes, len(bounds)))
    with tqdm(total=len(store), desc="data scan", unit="sample", disable=not progress, smoothing=0.05) as bar:
        if processes == 1:
            results = (scan_chunk(store, request, *b) for b in bounds)
            pool = None
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per process, set before any use
            pool = multiprocessing.get_context("fork").Pool(processes, _init_worker, (store, request))
            results = pool.imap(_scan_task, bounds)
        try:
            for (start, stop), (table, found, tokenised) in zip(bounds, results):
                tables.append(table)
                problems.extend(found)
                lengths.extend(tokenised)
                bar.update(stop - start)
        finally:
            if pool is not None:
                pool.terminate()
    info = dict(writer=writer, seconds=round(time.perf_counter() - started, 3), processes=processes)
    scan_cache.write_scan(path, key, store, EntryTable.concat(tables), problems, lengths, len(store), info)


def _drain(items: list):
    """Yield the items of a list in order while emptying it (so each can be freed after use)."""
    items.reverse()
    while items:
        yield items.pop()


def _scan_in_child(request: ScanRequest, path: Path, key: dict, processes: int, progress: bool, writer: dict):
    """Run `scan_to_file` in `python -m llava.data.parallel_scan`; its exception is raised here."""
    spec = path.with_name(f"{path.name}.spec-{os.getpid()}")
    error = spec.with_name(spec.name + ".err")
    spec.write_bytes(pickle.dumps(dict(request=request, path=path, key=key, processes=processes,
                                       progress=progress, writer=writer)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the modules this process sees
    try:
        code = subprocess.call([sys.executable, "-m", "llava.data.parallel_scan", str(spec)], env=env)
        if error.exists():
            raise pickle.loads(error.read_bytes())
        if code != 0:
            raise RuntimeError(f"the data scan of {request.data_path} failed (exit code {code}); see its output above")
    finally:
        for leftover in (spec, error):
            leftover.unlink(missing_ok=True)


def run_scan(request, path, key, processes=None, progress=False, child=None):
    """Scan into `path`: in a child process when the data is large (`child=None`) or when `child` is True."""
    processes = default_processes() if processes is None else processes
    if child is None:
        child = sum(os.path.getsize(f) for f in data_files(request.data_path)) >= CHILD_BYTES
    if child:
        _scan_in_child(request, path, key, processes, progress, scan_cache.writer_info())
    else:  # small data: no fork of this (threaded) process, one core is enough
        scan_to_file(request, path, key, 1, progress, scan_cache.writer_info())


def load_or_scan(request: ScanRequest, cache_dir=None, processes=None, progress=False,
                 child=None) -> scan_cache.ScanResult:
    """The scan of `request`, from the cache when a valid one exists, else scanned once (see the module doc).

    `cache_dir`: None for `scan_cache.default_cache_dir()`, "none"/"off" for no cache (this process scans
    into a temporary folder). `processes`: scanning processes (default: every core).
    """
    started = time.perf_counter()
    if isinstance(cache_dir, str) and cache_dir.lower() in scan_cache.DISABLED:
        return _scan_uncached(request, processes, progress, child, started)
    key = scan_cache.cache_key(request)
    path = scan_cache.cache_path(cache_dir or scan_cache.default_cache_dir(), key)
    lock = path.with_name(path.name + ".lock")
    while True:
        result = scan_cache.try_read(path, key)
        if result is not None:
            return _report(result, started)
        try:
            locked = scan_cache.try_lock(lock)
        except OSError as err:  # a read-only or missing folder: still train, say why it will scan every time
            logger.warning("data: cannot write the scan cache in %s (%s); scanning without one (see --data_cache_dir)",
                           path.parent, err)
            return _scan_uncached(request, processes, progress, child, started)
        if locked:
            with scan_cache.heartbeat(lock):
                result = scan_cache.try_read(path, key, warn=False)  # written while we waited
                if result is None:
                    run_scan(request, path, key, processes, progress, child)
                    result = scan_cache.read_scan(path, key)
                    result.scanned = True
            return _report(result, started)
        scan_cache.wait_unlocked(lock)


def _scan_uncached(request, processes, progress, child, started) -> scan_cache.ScanResult:
    """Scan into a temporary folder and map the result; the file is gone when this returns."""
    folder = Path(tempfile.mkdtemp(prefix="llava-scan-"))
    try:
        key = scan_cache.cache_key(request)
        path = folder / "scan.bin"
        run_scan(request, path, key, processes, progress, child)
        result = scan_cache.read_scan(path, key)  # mapped: the pages stay after the file is removed
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result.scanned = True
    return _report(result, started)


def _report(result: scan_cache.ScanResult, started: float) -> scan_cache.ScanResult:
    """One line per rank: who scanned, or whose file was loaded."""
    header, seconds = result.header, time.perf_counter() - started
    if result.scanned:
        logger.info("data: scanned %d samples in %.1f s with %d processes; cache %s (%.1f MiB)",
                    result.n_records, header["seconds"], header["processes"], result.path,
                    result.path.stat().st_size / 2**20 if result.path.exists() else 0.0)
    else:
        w = header["writer"]
        logger.info("data: rank %s loaded the scan cache %s written by rank %s (%s, pid %s) in %.2f s",
                    scan_cache.writer_info()["rank"], result.path, w["rank"], w["host"], w["pid"], seconds)
    return result


def _child_main(spec_path: str) -> int:
    spec_file = Path(spec_path)
    try:
        scan_to_file(**pickle.loads(spec_file.read_bytes()))
    except BaseException as err:  # handed to the parent, which raises it as its own
        try:
            payload = pickle.dumps(err)
        except Exception:
            payload = pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))
        spec_file.with_name(spec_file.name + ".err").write_bytes(payload)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
