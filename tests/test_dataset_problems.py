"""Bad data: every kind is skipped and counted by default, and fails fast with its id in strict mode."""

import json
import logging

import pytest
from PIL import Image

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.constants import IGNORE_INDEX
from llava.data.dataset import LazySupervisedDataset
from llava.data.lengths import fit_length
from llava.data.problems import DataProblem

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
