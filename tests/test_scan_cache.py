"""The start-up scan's disk cache: what reuses it, what rebuilds it, and that a cached scan behaves as a cold one."""

import json
import logging
import os
from dataclasses import replace

import numpy as np
import pytest

from llava.conversation import get_conversation_template
from llava.data import parallel_scan, scan_cache
from llava.data.lengths import scan_records
from llava.data.parallel_scan import ScanRequest, load_or_scan
from llava.data.problems import DataProblem, ProblemLog
from llava.data.record_store import EntryTable, RecordStore
from llava.data.sources import load_records
from test_dataset_problems import BAD, LAYOUT, data, make  # noqa: F401  (data is a fixture)


def request(path, folder, tok, **kw):
    base = ScanRequest(str(path), str(folder), tok, "v1", LAYOUT, 300)
    return replace(base, **kw)


def scanned_ids(result):
    return [result.records.sample_id(int(i)) for i in result.entries.index]


def test_record_store_round_trip(data):
    path, folder = data
    records = load_records(path, str(folder))
    store = RecordStore.from_records(records)
    assert len(store) == len(records) == 11
    for i, record in enumerate(records):
        assert store[i] == record  # the same sample dict, id and image folder
    assert store[-1] == records[-1]
    with pytest.raises(IndexError):
        store[11]


def test_cache_is_reused_and_equals_a_direct_scan(data, tokenizers, tmp_path):
    path, folder = data
    tok = tokenizers("llama2")
    first = load_or_scan(request(path, folder, tok), cache_dir=tmp_path)
    second = load_or_scan(request(path, folder, tok), cache_dir=tmp_path)
    assert (first.scanned, second.scanned) == (True, False)
    assert second.path == first.path and len(list(tmp_path.glob("scan-*.bin"))) == 1
    # the reference: the plain in-memory scan of the same records
    records = load_records(path, str(folder))
    log, lengths = ProblemLog(), []
    entries = scan_records(records, tok, "v1", LAYOUT, 300, log, all_lengths=lengths)
    expected = EntryTable.from_entries(entries)
    for name, array in expected.arrays().items():
        np.testing.assert_array_equal(getattr(second.entries, name), array, err_msg=name)
    assert scanned_ids(second) == ["good_image", "good_text", "good_truncated_pixels"]
    assert sorted(second.all_lengths.tolist()) == sorted(lengths)
    replayed = ProblemLog()
    second.replay(replayed)
    assert replayed.counts == log.counts and replayed.examples == log.examples


def _rescanned(req, tmp_path):
    return load_or_scan(req, cache_dir=tmp_path).scanned


def test_changes_that_rebuild(data, tokenizers, tmp_path, monkeypatch):
    path, folder = data
    tok = tokenizers("llama2")
    assert _rescanned(request(path, folder, tok), tmp_path)
    assert not _rescanned(request(path, folder, tok), tmp_path)
    assert _rescanned(request(path, folder, tok, max_length=301), tmp_path)
    assert _rescanned(request(path, folder, tok, version="plain"), tmp_path)
    assert _rescanned(request(path, folder, tok, require_images=True), tmp_path)
    assert _rescanned(request(path, folder, tokenizers("mistral")), tmp_path)
    grown = tokenizers("llama2").__class__.from_pretrained(tok.name_or_path)
    grown.add_tokens(["<new_token>"])  # same class and files, one added token
    assert _rescanned(request(path, folder, grown), tmp_path)
    # the same template name with other content (e.g. an edited system prompt)
    edited = replace(get_conversation_template("v1"), system="Another system prompt.")
    monkeypatch.setattr(scan_cache, "get_conversation_template", lambda version: edited)
    assert _rescanned(request(path, folder, tok), tmp_path)
    monkeypatch.undo()
    assert not _rescanned(request(path, folder, tok), tmp_path)
    # the data file: one sample fewer, and the new scan sees it
    samples = json.loads(path.read_text())
    path.write_text(json.dumps(samples[1:]))
    result = load_or_scan(request(path, folder, tok), cache_dir=tmp_path)
    assert result.scanned and scanned_ids(result) == ["good_text", "good_truncated_pixels"]


def test_touched_data_file_rebuilds(data, tokenizers, tmp_path):
    path, folder = data
    req = request(path, folder, tokenizers("llama2"))
    assert _rescanned(req, tmp_path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, new modification time
    assert _rescanned(req, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_cache_is_rebuilt_with_a_warning(data, tokenizers, tmp_path, caplog, damage):
    path, folder = data
    req = request(path, folder, tokenizers("llama2"))
    first = load_or_scan(req, cache_dir=tmp_path)
    file, lengths, problems = first.path, first.entries.length.tolist(), first.problems
    del first  # its mapping of the file
    raw, middle = file.read_bytes(), file.stat().st_size // 2
    damaged = {"truncate": raw[:middle], "flip": raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :],
               "empty": b""}[damage]
    (tmp_path / "damaged").write_bytes(damaged)
    os.replace(tmp_path / "damaged", file)  # a new file, as a partial copy would be (never truncate a mapped file)
    with caplog.at_level(logging.WARNING, logger="llava.data"):
        again = load_or_scan(req, cache_dir=tmp_path)
    assert again.scanned
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    reason = {"truncate": "truncated", "flip": "checksum mismatch", "empty": "bad magic"}[damage]
    assert [w for w in warnings if "is unusable" in w and reason in w] == warnings[:1] and len(warnings) == 1
    assert again.path == file and file.stat().st_size == len(raw)  # rebuilt in place
    assert (again.entries.length.tolist(), again.problems) == (lengths, problems)


def test_cold_and_cached_datasets_agree(data, tokenizers, tmp_path, caplog, monkeypatch):
    """Problem counts, example ids, the summary line and strict mode are the same from the cache."""
    monkeypatch.setenv("LLAVA_DATA_CACHE_DIR", str(tmp_path))
    path, folder = data
    tok = tokenizers("llama2")
    runs = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llava.data"):
            ds = make(path, folder, tok)
        summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        loaded = [r.getMessage() for r in caplog.records if "loaded the scan cache" in r.getMessage()]
        runs.append((dict(ds.problems.counts), dict(ds.problems.examples), summary, ds.lengths,
                     ds.modality_lengths, bool(loaded)))
    assert runs[0][:5] == runs[1][:5]
    assert (runs[0][5], runs[1][5]) == (False, True)
    assert runs[0][2][-1] == "data: kept 3, skipped 8 samples (" + ", ".join(f"{k}=1" for k in BAD) + ")"
    # strict: cached problems still fail, naming the first bad sample, as the cold scan does
    first = next(iter(BAD.values()))["id"]
    with pytest.raises(DataProblem, match=f"sample {first}: malformed"):
        make(path, folder, tok, strict=True)
    assert len(list(tmp_path.glob("scan-*.bin"))) == 1  # strict used the same cache file


def test_strict_cold_scan_names_the_sample(data, tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_DATA_CACHE_DIR", str(tmp_path / "fresh"))
    path, folder = data
    with pytest.raises(DataProblem, match="sample bad_malformed: malformed: no 'conversations' list"):
        make(path, folder, tokenizers("llama2"), strict=True)


def test_child_process_scan_with_two_workers_equals_in_process(data, tokenizers, tmp_path, monkeypatch):
    path, folder = data
    samples = json.loads(path.read_text())
    path.write_text(json.dumps(samples * 3))  # several chunks: 33 records
    monkeypatch.setattr(parallel_scan, "CHUNK", 5)  # the child reads the module anew: chunks of 2048 there
    req = request(path, folder, tokenizers("llama2"))
    inner = load_or_scan(req, cache_dir=tmp_path / "a", child=False)
    outer = load_or_scan(req, cache_dir=tmp_path / "b", processes=2, child=True)
    assert outer.scanned and outer.header["processes"] == 1  # one chunk of 2048 in the child: one process
    for name, array in inner.entries.arrays().items():
        np.testing.assert_array_equal(getattr(outer.entries, name), array, err_msg=name)
    # chunk size changes only how kinds interleave (chunk order); per kind the order is the records' order
    assert sorted(inner.problems) == sorted(outer.problems) and len(inner.problems) == 24
    for kind in BAD:
        assert [p for p in inner.problems if p[0] == kind] == [p for p in outer.problems if p[0] == kind]
    assert inner.all_lengths.tolist() == outer.all_lengths.tolist()


def test_pool_of_two_equals_one_process(data, tokenizers, tmp_path, monkeypatch):
    path, folder = data
    samples = json.loads(path.read_text())
    path.write_text(json.dumps(samples * 3))
    req = request(path, folder, tokenizers("llama2"))
    key = scan_cache.cache_key(req)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # scan_to_file sets it before forking its pool
    monkeypatch.setattr(parallel_scan, "CHUNK", 5)  # 7 chunks
    parallel_scan.scan_to_file(req, tmp_path / "one.bin", key, 1, False, {})
    parallel_scan.scan_to_file(req, tmp_path / "pool.bin", key, 2, False, {})
    one, pool = scan_cache.read_scan(tmp_path / "one.bin", key), scan_cache.read_scan(tmp_path / "pool.bin", key)
    assert pool.header["processes"] == 2 and one.header["processes"] == 1
    for name, array in one.entries.arrays().items():
        np.testing.assert_array_equal(getattr(pool.entries, name), array, err_msg=name)
    assert one.problems == pool.problems
    assert one.all_lengths.tolist() == pool.all_lengths.tolist()


def test_scan_error_in_child_is_raised_here(tmp_path, tokenizers):
    bad = tmp_path / "mix.yaml"
    bad.write_text("datasets: []\n")
    req = ScanRequest(str(bad), None, tokenizers("llama2"), "v1", None, 300)
    with pytest.raises(ValueError, match="expected a 'datasets:' list"):
        load_or_scan(req, cache_dir=tmp_path, child=True)


def test_abandoned_lock_is_taken_over(data, tokenizers, tmp_path, caplog, monkeypatch):
    path, folder = data
    req = request(path, folder, tokenizers("llama2"))
    lock = scan_cache.cache_path(tmp_path, scan_cache.cache_key(req))
    lock = lock.with_name(lock.name + ".lock")
    lock.write_text('{"host": "gone", "pid": 1, "rank": 0}')
    os.utime(lock, (1, 1))  # untouched for decades
    monkeypatch.setattr(scan_cache, "POLL_S", 0.01)
    with caplog.at_level(logging.WARNING, logger="llava.data"):
        assert load_or_scan(req, cache_dir=tmp_path).scanned
    assert any("abandoned scan lock" in r.getMessage() for r in caplog.records)
    assert not lock.exists()


def test_disabled_cache_scans_and_keeps_nothing(data, tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_DATA_CACHE_DIR", str(tmp_path / "unused"))
    path, folder = data
    req = request(path, folder, tokenizers("llama2"))
    assert load_or_scan(req, cache_dir="none").scanned
    assert load_or_scan(req, cache_dir="none").scanned
    assert not (tmp_path / "unused").exists()


def test_check_writes_the_cache_that_training_loads(data, tiny_llama_dir, tiny_clip_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from llava.data import check

    path, folder = data
    argv = ["--data_path", str(path), "--image_folder", str(folder), "--model_name_or_path", str(tiny_llama_dir),
            "--version", "v1", "--model_max_length", "300", "--vision_tower", str(tiny_clip_dir), "--no_progress",
            "--data_cache_dir", str(tmp_path)]
    assert check.main(argv) == 0
    cold = capsys.readouterr().out.splitlines()
    assert check.main(argv) == 0
    warm = capsys.readouterr().out.splitlines()
    assert cold[1:] == warm[1:] and "skipped 9 samples" in cold[-1]  # line 0 holds the timing
    # the check decodes pixels too (good_truncated_pixels: decode_error), after the cached header scan
    assert cold[0].split(" (")[0] == warm[0].split(" (")[0] == "samples: 11, usable: 2, skipped: 9"
    layout = check.check_layout(check.parse_args(argv))  # train.py's derivation, vision_config.layout_from_args
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    result = load_or_scan(ScanRequest(str(path), str(folder), tok, "v1", layout, 300), cache_dir=tmp_path)
    assert not result.scanned and len(list(tmp_path.glob("scan-*.bin"))) == 1


def test_unwritable_cache_folder_scans_with_a_warning(data, tokenizers, tmp_path, caplog):
    path, folder = data
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="llava.data"):
        result = load_or_scan(request(path, folder, tokenizers("llama2")), cache_dir=blocker / "cache")
    assert result.scanned and len(result.entries) == 3
    assert any("cannot write the scan cache" in r.getMessage() for r in caplog.records)


def _uss_kib() -> int:
    rollup = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").read().splitlines()[1:])
    return int(rollup["Private_Clean"].split()[0]) + int(rollup["Private_Dirty"].split()[0])


def _forked_reader_growth_mib(records) -> float:
    """Private memory (USS) a forked child gains by reading every record, as a DataLoader worker does."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = _uss_kib()
        total = sum(len(turn["value"]) for i in range(len(records)) for turn in records[i].sample["conversations"])
        os.write(write_fd, json.dumps([before, _uss_kib(), total]).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        before, after, total = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert total > 0
    return (after - before) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc needed")
def test_forked_workers_do_not_copy_the_mapped_records(tmp_path):
    """Reading every record from a forked process copies almost nothing; Python dicts are copied page by page."""
    from llava.data.sources import Record

    turn = lambda who, k: {"from": who, "value": " ".join(f"word{j}" for j in range(k))}  # noqa: E731
    records = [Record({"id": str(i), "conversations": [turn("human", 30), turn("gpt", 150)]}, str(i), None)
               for i in range(20_000)]  # about 36 MB of Python objects
    store = RecordStore.from_records(records)
    scan_cache.write_scan(tmp_path / "s.bin", {}, store, EntryTable.from_entries([]), [], [], len(store), {})
    mapped = scan_cache.read_scan(tmp_path / "s.bin", {}).records
    copied_dicts, copied_store = _forked_reader_growth_mib(records), _forked_reader_growth_mib(mapped)
    print(f"forked reader copied {copied_dicts:.1f} MiB of dicts, {copied_store:.1f} MiB of the mapped store")
    assert copied_store < 4, copied_store
    assert copied_dicts > 5 * copied_store + 10, (copied_dicts, copied_store)
