"""Bad data: every kind is skipped and counted by default, and fails fast with its id in strict mode."""

import json
import logging
import re

import pytest
from PIL import Image

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.constants import IGNORE_INDEX
from llava.data.dataset import LazySupervisedDataset
from llava.data.lengths import fit_length
from llava.data.problems import PROBLEM_KINDS, DataProblem, ProblemLog
from llava.data.sources import load_records, read_json_records

LAYOUT = ImageLayout(56, 14, to_pinpoint_tuple(default_grid_pinpoints(56)), "anyres", "spatial_unpad")


def qa(sid, q="<image>\nQ", a="A.", image="ok.jpg", **extra):
    out = {"id": sid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **extra}
    if image is not None:
        out["image"] = image
    return out


BAD = {  # kind -> a sample with exactly that problem
    "malformed": {"id": "bad_malformed", "conversations": "not a list"},
    "unknown_role": {"id": "bad_role", "image": "ok.jpg", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "robot", "value": "A"}]},
    "no_reply": {"id": "bad_noreply", "image": "ok.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}]},
    "image_token_mismatch": qa("bad_markers", q="<image>\n<image>\nQ"),
    "missing_image": qa("bad_missing", image="nope.jpg"),
    "empty_image": qa("bad_empty", image="empty.jpg"),
    "corrupt_image": qa("bad_corrupt", image="garbage.jpg"),
    "over_length": qa("bad_long", a="long " * 300),
}
GOOD = [qa("good_image"), qa("good_text", q="Q", image=None), qa("good_truncated_pixels", image="cut.jpg")]


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (80, 60), (10, 200, 30)).save(folder / "ok.jpg", quality=95)
    noise = Image.effect_noise((200, 150), 64).convert("RGB")
    noise.save(folder / "full.jpg", quality=95)
    raw = (folder / "full.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(raw[: len(raw) // 3])  # header fine, pixels truncated
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(GOOD[:2] + list(BAD.values()) + GOOD[2:]))
    return path, folder


def make(path, folder, tok, strict=False):
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return LazySupervisedDataset(str(path), tok, version="v1", max_length=300, layout=LAYOUT,
                                 image_processor=processor, image_folder=str(folder), strict=strict)


def test_every_kind_counted_and_logged(data, tokenizers, caplog):
    path, folder = data
    with caplog.at_level(logging.INFO, logger="llava.data"):
        ds = make(path, folder, tokenizers("llama2"))
    assert dict(ds.problems.counts) == {kind: 1 for kind in BAD}
    assert {kind: ids for kind, ids in ds.problems.examples.items()} == {k: [v["id"]] for k, v in BAD.items()}
    assert len(ds) == 3
    summary = [r.getMessage() for r in caplog.records if "skipped 8 samples" in r.getMessage()]
    assert summary == ["data: kept 3, skipped 8 samples (" + ", ".join(f"{k}=1" for k in BAD) + ")"]
    # the truncated JPEG passes the header scan, fails to decode, is counted and replaced by the next sample
    item = ds[2]
    assert ds.met_in_training.collect().counts["decode_error"] == 1
    assert item["input_ids"].tolist() == ds[0]["input_ids"].tolist()
    assert "skipped 9 samples" in ds.summary() and "decode_error=1" in ds.summary()


@pytest.mark.parametrize("kind", list(BAD))
def test_strict_fails_with_sample_id(tmp_path, data, tokenizers, kind):
    _, folder = data
    path = tmp_path / "one.json"
    path.write_text(json.dumps(GOOD[:2] + [BAD[kind]]))
    with pytest.raises(DataProblem, match=f"sample {BAD[kind]['id']}: {kind}") as info:
        make(path, folder, tokenizers("llama2"), strict=True)
    assert info.value.kind == kind and info.value.sample_id == BAD[kind]["id"]


def test_strict_decode_error(tmp_path, data, tokenizers):
    _, folder = data
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(GOOD))
    ds = make(path, folder, tokenizers("llama2"), strict=True)
    with pytest.raises(DataProblem, match="sample good_truncated_pixels: decode_error"):
        ds[2]


def test_all_masked_is_never_trained_on():
    with pytest.raises(DataProblem, match="sample s1: all_masked"):
        fit_length([1, 2, 3], [IGNORE_INDEX] * 3, 0, 100, False, "s1")
    ids, labels, cut = fit_length([1, 2, 3], [IGNORE_INDEX, 2, 3], 0, 100, False, "s2")
    assert (ids, labels, cut) == ([1, 2, 3], [IGNORE_INDEX, 2, 3], False)


GOOD_LINE = json.dumps({"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})


def test_json_decode_errors_name_file_line_and_column(tmp_path):
    bad_byte = tmp_path / "bytes.json"
    bad_byte.write_bytes(b'[\n  {"id": "a\xff"}]')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad_byte))}:2:12: not UTF-8 \(byte 0xff\)$"):
        read_json_records(bad_byte)
    cut = tmp_path / "cut.json"
    cut.write_text('[\n  {"id": "a",\n   "conversations": [')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(cut))}:3:22: invalid JSON: Expecting value$"):
        read_json_records(cut)
    lines = tmp_path / "lines.jsonl"
    lines.write_text(GOOD_LINE + "\n\n" + GOOD_LINE[:-1] + "\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(lines))}:3: invalid JSON: .* \(column \d+\)$"):
        read_json_records(lines)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"datasets:\n  - json_path: {lines}\n  - json_path: cut.json\n")
    with pytest.raises(ValueError, match=rf"lines.jsonl:3: invalid JSON.*\(in mixture {re.escape(str(mix))}, entry 1\)"):
        load_records(mix)


def test_bad_jsonl_lines_are_counted_problems(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes((GOOD_LINE + "\n" + GOOD_LINE[:-1] + "\n").encode() + b'{"id": "\xe9"}\n' + GOOD_LINE.encode())
    problems = ProblemLog()
    records = load_records(path, problems=problems)
    assert [r.sample_id for r in records] == ["t", "t"]
    assert dict(problems.counts) == {"bad_json_line": 2} and problems.examples["bad_json_line"] == ["d.jsonl:2", "d.jsonl:3"]
    with pytest.raises(DataProblem, match=rf"sample d.jsonl:2: bad_json_line: {re.escape(str(path))}:2: invalid JSON"):
        load_records(path, problems=ProblemLog(strict=True))


def test_bad_jsonl_line_in_training_counted_or_strict(data, tokenizers):
    _, folder = data
    path = folder.parent / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in GOOD[:2]) + "\n{oops\n")
    ds = make(path, folder, tokenizers("llama2"))
    assert len(ds) == 2 and dict(ds.problems.counts) == {"bad_json_line": 1}
    assert "bad_json_line=1" in ds.summary()
    with pytest.raises(DataProblem, match=r"mixed.jsonl:3: invalid JSON"):
        make(path, folder, tokenizers("llama2"), strict=True)


@pytest.mark.parametrize("workers", [0, 1])
def test_end_summary_counts_decode_errors_met_in_workers(data, tokenizers, caplog, workers):
    """Decode errors met while loading, in the main process or a DataLoader worker, reach the end summary."""
    from torch.utils.data import DataLoader

    path, folder = data
    ds = make(path, folder, tokenizers("llama2"))
    loader = DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=lambda batch: batch)
    assert len([item for batch in loader for item in batch]) == 3
    with caplog.at_level(logging.WARNING, logger="llava.data"):
        line = ds.log_summary()
    kinds = [k for k in PROBLEM_KINDS if k in BAD or k == "decode_error"]  # the report's order
    assert line == "data: kept 3, skipped 9 samples (" + ", ".join(f"{k}=1" for k in kinds) + ")"
    (record,) = [r for r in caplog.records if r.getMessage().startswith(line)]
    assert record.levelno == logging.WARNING and "replaced while loading: 1" in record.getMessage()


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_decoding_header_read_catches_truncation(tmp_path, fmt):
    from llava.data.headers import POOL_THRESHOLD, image_header, read_headers

    full = tmp_path / f"full.{fmt}"
    Image.effect_noise((120, 90), 64).convert("RGB").save(full)
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert image_header(str(cut)) == (90, 120)  # the header alone looks fine
    assert image_header(str(cut), decode=True) == "decode_error"
    assert image_header(str(full), decode=True) == (90, 120)
    expected = {}
    for i in range(POOL_THRESHOLD // 2 + 1):  # enough distinct files for the thread pool
        for name, source, result in (("f", full, (90, 120)), ("c", cut, "decode_error")):
            copy = tmp_path / f"{name}{i}.{fmt}"
            copy.write_bytes(source.read_bytes())
            expected[str(copy)] = result
    assert read_headers(list(expected), workers=4, decode=True) == expected
