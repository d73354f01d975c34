"""Datasets: JSON / JSONL / YAML mixtures, multi-image and text-only samples, collator, modality lengths."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.collator import DataCollatorForSupervisedDataset
from llava.data.dataset import LazySupervisedDataset, make_supervised_data_module
from llava.data.sources import load_records, sample_subset
from llava.mm_utils import process_anyres_image

LAYOUT = ImageLayout(56, 14, to_pinpoint_tuple(default_grid_pinpoints(56)), "anyres", "spatial_unpad")
SIZES = {"wide.jpg": (120, 50), "tall.png": (40, 130), "square.jpg": (64, 64)}  # PIL (width, height)


@pytest.fixture(scope="module")
def processor():
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, (name, size) in enumerate(SIZES.items()):
        Image.new("RGB", size, (40 * i, 100, 200 - 40 * i)).save(images / name)
    return images


def qa(q, a, image=None, sid=None):
    out = {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    if image is not None:
        out["image"] = image
    if sid is not None:
        out["id"] = sid
    return out


def dataset(data_path, tokenizer, processor, folder, **kw):
    """The dataset with explicit inputs: the tiny anyres layout, its processor, v1, 2048 tokens unless overridden."""
    base = dict(version="v1", max_length=2048, layout=LAYOUT, image_processor=processor, image_folder=str(folder))
    return LazySupervisedDataset(str(data_path), tokenizer, **{**base, **kw})


def write_json(path, samples, jsonl=False):
    with open(path, "w") as fh:
        if jsonl:
            fh.writelines(json.dumps(s) + "\n" for s in samples)
        else:
            json.dump(samples, fh)
    return path


def test_sampling_strategies():
    items = list(range(10))
    assert sample_subset(items, "all") == items
    assert sample_subset(items, "first:3") == [0, 1, 2]
    assert sample_subset(items, "end:2") == [8, 9]
    assert sample_subset(items, "first:25%") == [0, 1, 2]  # ceil(2.5)
    assert sample_subset(items, "random:4") == sample_subset(items, "random:4")  # seeded
    assert len(set(sample_subset(items, "random:4"))) == 4 and sample_subset(items, "random:99") == items
    with pytest.raises(ValueError, match="sampling_strategy 'middle:3'"):
        sample_subset(items, "middle:3")


def test_json_jsonl_and_yaml_mixture(tmp_path, folder):
    a = write_json(tmp_path / "a.json", [qa("q", "a", sid=f"a{i}") for i in range(6)])
    b = write_json(tmp_path / "b.jsonl", [qa("q", "a", sid=f"b{i}") for i in range(4)], jsonl=True)
    assert [r.sample_id for r in load_records(b)] == ["b0", "b1", "b2", "b3"]
    other = tmp_path / "other"
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "datasets:\n"
        f"  - json_path: {a}\n    sampling_strategy: first:2\n"
        f"  - json_path: {a}\n    sampling_strategy: end:1\n"
        f"  - json_path: b.jsonl\n    sampling_strategy: random:50%\n    image_folder: {other}\n"
        f"  - json_path: {b}\n    sampling_strategy: all\n"
    )
    records = load_records(mix, image_folder=str(folder))
    ids = [r.sample_id for r in records]
    assert ids[:3] == ["a0", "a1", "a5"] and ids[-4:] == ["b0", "b1", "b2", "b3"]
    assert len(ids) == 9 and set(ids[3:5]) < {"b0", "b1", "b2", "b3"}
    assert [r.image_folder for r in records][2:6] == [str(folder), str(other), str(other), str(folder)]
    no_id = write_json(tmp_path / "c.json", [qa("q", "a")])
    assert load_records(no_id)[0].sample_id == "c.json:0"


def test_llava_two_argument_call_works_on_text_only_data(tmp_path, tokenizers):
    """LLaVA's `make_supervised_data_module(tokenizer=, data_args=)`, nothing else: LLaVA's default template."""
    tok = tokenizers("llama2")
    tok.model_max_length = 256
    data = write_json(tmp_path / "d.json", [qa("Just text?", "Yes, just text.", sid="text")])
    data_args = SimpleNamespace(data_path=str(data), image_folder=None, strict_data=False)
    ds = make_supervised_data_module(tokenizer=tok, data_args=data_args)["train_dataset"]
    assert len(ds) == 1 and ds.version == "v0" and ds[0]["images"] == []


def test_items_multi_image_text_only_and_collator(tmp_path, folder, processor, tokenizers):
    tok = tokenizers("llama2")
    samples = [
        qa("<image>\nWhat?", "A wide image.", image="wide.jpg", sid="one"),
        qa("Compare <image> and <image>", "Two.", image=["tall.png", "square.jpg"], sid="two"),
        qa("Just text?", "Yes, just text.", sid="text"),
        qa("No marker here", "Marker added.", image="square.jpg", sid="nomarker"),
    ]
    data = write_json(tmp_path / "d.json", samples)
    data_args = SimpleNamespace(data_path=str(data), image_folder=str(folder), strict_data=False)  # what the user passed
    module = make_supervised_data_module(tok, data_args, version="v1", layout=LAYOUT, image_processor=processor,
                                         model_max_length=2048)
    ds = module["train_dataset"]
    assert module["eval_dataset"] is None and len(ds) == 4
    items = [ds[i] for i in range(4)]
    for item, n_images in zip(items, [1, 2, 0, 1]):
        assert item["input_ids"].tolist().count(IMAGE_TOKEN_INDEX) == n_images == len(item["images"])
    assert items[1]["image_sizes"] == [SIZES["tall.png"], SIZES["square.jpg"]]
    assert items[2]["images"] == [] and items[2]["image_sizes"] == []
    # pixels exactly as process_anyres_image makes them, tiles per the layout
    for image, (w, h), name in zip(items[1]["images"], items[1]["image_sizes"], ["tall.png", "square.jpg"]):
        assert image.shape == (LAYOUT.num_tiles((h, w)), 3, 56, 56)
        ref = process_anyres_image(Image.open(folder / name), processor, default_grid_pinpoints(56))
        assert torch.equal(image, ref)
    # exact lengths: text tokens + (num_tokens - 1) per image
    for item, length in zip(items, ds.lengths):
        extra = sum(LAYOUT.num_tokens((h, w)) - 1 for w, h in item["image_sizes"])
        assert length == item["input_ids"].shape[0] + extra
    # a sample without a marker gets one at the start of the first human turn, as LLaVA
    tokens = tok.convert_ids_to_tokens([i for i in items[3]["input_ids"].tolist() if i >= 0])
    pos = items[3]["input_ids"].tolist().index(IMAGE_TOKEN_INDEX)
    assert tokens[pos - 3 : pos] == ["▁US", "ER", ":"] or tokens[pos - 4 : pos - 1] == ["▁US", "ER", ":"]

    tok.pad_token = tok.unk_token
    try:
        batch = module["data_collator"](items)
    finally:
        tok.pad_token = None
    width = max(x["input_ids"].shape[0] for x in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    for row, item in enumerate(items):
        n = item["input_ids"].shape[0]
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert (batch["input_ids"][row, n:] == tok.unk_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [True] * n + [False] * (width - n)
    assert len(batch["images"]) == 4
    assert batch["image_sizes"] == [SIZES["wide.jpg"], SIZES["tall.png"], SIZES["square.jpg"], SIZES["square.jpg"]]


def test_collator_needs_pad_token(tokenizers):
    with pytest.raises(ValueError, match="has no pad token"):
        DataCollatorForSupervisedDataset(tokenizers("llama2"))([])


@pytest.mark.parametrize("kind", ["image", "text", "mixed"])
def test_modality_lengths(tmp_path, folder, processor, tokenizers, kind):
    """Positive for image samples, negative for text-only (LLaVA crashed on all-image/all-text)."""
    image = [qa("<image>\nQ", "A" * (i + 1), image="wide.jpg") for i in range(3)]
    text = [qa("Q" * (i + 1), "A") for i in range(3)]
    samples = {"image": image, "text": text, "mixed": image + text}[kind]
    data = write_json(tmp_path / "m.json", samples)
    layout_args = {} if kind != "text" else dict(layout=None, image_processor=None)
    ds = dataset(data, tokenizers("qwen2"), processor, folder, version="qwen_2", **layout_args)
    signs = [x > 0 for x in ds.modality_lengths]
    assert signs == [bool(s.get("image")) for s in samples]
    assert [abs(x) for x in ds.modality_lengths] == ds.lengths and all(x > 0 for x in ds.lengths)
    if kind != "text":
        assert min(ds.lengths[:3]) > LAYOUT.num_tokens((50, 120))  # image tokens counted


def test_text_only_overflow_is_truncated_image_overflow_dropped(tmp_path, folder, processor, tokenizers):
    samples = [qa("Q", "long " * 400, sid="t"), qa("<image>\nQ", "long " * 400, image="wide.jpg", sid="i")]
    data = write_json(tmp_path / "o.json", samples)
    ds = dataset(data, tokenizers("qwen2"), processor, folder, version="qwen_2", max_length=200)
    assert len(ds) == 1 and ds.lengths == [200] and ds.problems.counts["over_length"] == 1
    item = ds[0]
    assert item["input_ids"].shape == (200,) and (item["labels"] != IGNORE_INDEX).sum() > 100


def test_image_resized_after_the_scan_is_refused_by_name(tmp_path, folder, processor, tokenizers):
    """The scan cache keys on data files, not images: a replaced image of another size stops loading, named."""
    tok = tokenizers("llama2")
    data = write_json(tmp_path / "d.json", [qa("<image>\nWhat?", "Wide.", image="wide.jpg", sid="w")])
    cache = tmp_path / "cache"
    assert dataset(data, tok, processor, folder, cache_dir=str(cache))[0]["image_sizes"] == [SIZES["wide.jpg"]]
    Image.new("RGB", (50, 120), (0, 0, 0)).save(folder / "wide.jpg")  # same name, transposed size
    warm = dataset(data, tok, processor, folder, cache_dir=str(cache))  # the cache is reused: data file unchanged
    with pytest.raises(ValueError, match=r"wide\.jpg \(sample w\) is 120x50 .* was 50x120 .* scan cache is stale"):
        warm[0]
