"""`python -m llava.data.check`: the preflight report and --strict exit code."""

import json

import pytest
from PIL import Image

from llava.data import check
from llava.demo.tiny import vendored_tokenizer_dir


def _dataset(tmp_path, bad: bool):
    folder = tmp_path / "img"
    folder.mkdir(parents=True)
    Image.new("RGB", (100, 40)).save(folder / "a.jpg")
    samples = [
        {"id": f"s{i}", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Thing " * (i + 1)}]}
        for i in range(4)
    ] + [{"id": "txt", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    if bad:
        samples.append({"id": "gone", "image": "missing.jpg", "conversations": samples[0]["conversations"]})
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path, folder


def _run(tmp_path, tiny_clip_dir, bad, strict, capsys):
    path, folder = _dataset(tmp_path, bad)
    argv = ["--data_path", str(path), "--image_folder", str(folder), "--model_name_or_path",
            str(vendored_tokenizer_dir("llama2")), "--version", "v1", "--model_max_length", "4096",
            "--vision_tower", str(tiny_clip_dir), "--image_aspect_ratio", "anyres", "--no_progress"]
    code = check.main(argv + (["--strict"] if strict else []))
    return code, capsys.readouterr().out


def test_report_and_strict_exit(tmp_path, tiny_clip_dir, capsys):
    code, out = _run(tmp_path / "ok", tiny_clip_dir, bad=False, strict=True, capsys=capsys)
    assert code == 0
    assert "samples: 5, usable: 5, skipped: 0" in out and "with images: 4, text-only: 1" in out
    assert "over model_max_length 4096: 0 (0.00%)" in out

    code, out = _run(tmp_path / "bad", tiny_clip_dir, bad=True, strict=False, capsys=capsys)
    assert code == 0 and "missing_image: 1" in out and "first ids: ['gone']" in out
    assert "data: kept 5, skipped 1 samples (missing_image=1)" in out
    code, _ = _run(tmp_path / "bad2", tiny_clip_dir, bad=True, strict=True, capsys=capsys)
    assert code == 1


def test_percentile_and_layout(tiny_clip_dir):
    assert [check.percentile(list(range(1, 101)), q) for q in (50, 95, 100)] == [50, 95, 100]
    args = check.parse_args(["--data_path", "x", "--model_name_or_path", "y", "--vision_tower", str(tiny_clip_dir)])
    layout = check.check_layout(args)
    assert (layout.tile_size, layout.patch_size, layout.aspect_ratio, layout.merge_type) == (56, 14, "square", "flat")
    assert layout.grid_pinpoints == ((56, 112), (112, 56), (112, 112), (168, 56), (56, 168))


LAYOUT_FLAGS = {  # name -> the layout flags given to both train.py and the check
    "defaults": {},
    "anyres": {"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad"},
    "square": {"image_aspect_ratio": "square", "mm_patch_merge_type": "flat"},
    "pad_unpad": {"image_aspect_ratio": "pad", "mm_patch_merge_type": "spatial_unpad"},
}
# Image tokens of the finetune data's first sample (a 90x40 image) per layout, with the tiny 56-px CLIP:
# square/flat: one tile of 4x4 patches; pad + unpad merge: + image_newline; anyres: base tile + the 1x2 grid's
# 4 x 8 patches (the image fills the 56x112 canvas: nothing to unpad) with one newline per row.
FIRST_IMAGE_TOKENS = {"defaults": 16, "anyres": 16 + 4 * (8 + 1), "square": 16, "pad_unpad": 17}


@pytest.mark.parametrize("name", list(LAYOUT_FLAGS))
def test_check_measures_what_training_trains_on(name, tiny_llama_dir, tiny_clip_dir, tmp_path):
    """Same flags (none at all included): the check's layout and lengths are train.py's, sample for sample."""
    from train_support import base_argv, make_data

    from llava.train.arguments import parse_args
    from llava.train.train import build

    data = make_data(tmp_path / "data")
    flags = {"image_aspect_ratio": None, "mm_patch_merge_type": None, **LAYOUT_FLAGS[name]}
    argv = base_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "out", version="v1",
                     data_path=data / "finetune.json", **flags)
    _, model, module = build(*parse_args(argv))
    trained = module["train_dataset"]

    check_argv = ["--data_path", str(data / "finetune.json"), "--image_folder", str(data / "images"),
                  "--model_name_or_path", str(tiny_llama_dir), "--vision_tower", str(tiny_clip_dir),
                  "--version", "v1", "--no_progress"]
    for key, value in LAYOUT_FLAGS[name].items():
        check_argv += [f"--{key}", value]
    args = check.parse_args(check_argv)
    found = check.run(args)
    assert check.check_layout(args) == model.get_image_layout() == trained.layout
    assert [e.length for e in found.entries] == trained.lengths
    assert [e.index for e in found.entries] == [e.index for e in trained.entries]
    text_len = trained[0]["input_ids"].shape[0]
    assert trained.lengths[0] == text_len - 1 + FIRST_IMAGE_TOKENS[name]
    expected_layout = ("anyres", "spatial_unpad") if name == "anyres" else (
        ("pad", "spatial_unpad") if name == "pad_unpad" else ("square", "flat"))
    assert (trained.layout.aspect_ratio, trained.layout.merge_type) == expected_layout


def _truncated_jpeg(path):
    Image.effect_noise((200, 150), 64).convert("RGB").save(path, quality=95)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])  # the header is fine, the pixels stop a third of the way


def test_strict_fails_on_truncated_jpeg(tmp_path, tiny_clip_dir, capsys):
    path, folder = _dataset(tmp_path, bad=False)
    _truncated_jpeg(folder / "a.jpg")
    argv = ["--data_path", str(path), "--image_folder", str(folder), "--model_name_or_path",
            str(vendored_tokenizer_dir("llama2")), "--version", "v1", "--vision_tower", str(tiny_clip_dir),
            "--no_progress"]
    assert check.main(argv + ["--strict"]) == 1
    out = capsys.readouterr().out
    assert "decode_error: 4" in out and "first ids: ['s0', 's1', 's2', 's3']" in out
    assert check.main(argv) == 0  # not strict: the text-only sample still trains
    assert check.main(argv + ["--strict", "--headers_only"]) == 0  # what a header scan alone would miss


@pytest.mark.parametrize("content", ["[]", "[{\"id\": \"x\", \"conversations\": \"no\"}]"])
def test_empty_dataset_fails(tmp_path, tiny_clip_dir, capsys, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    argv = ["--data_path", str(path), "--model_name_or_path", str(vendored_tokenizer_dir("llama2")),
            "--version", "v1", "--vision_tower", str(tiny_clip_dir), "--no_progress"]
    assert check.main(argv + ["--strict"]) == 1
    assert check.main(argv) == 1  # training would stop at start, strict or not
    assert "error: no usable sample" in capsys.readouterr().err


def test_bad_jsonl_line_named_and_counted(tmp_path, tiny_clip_dir, capsys):
    good = json.dumps({"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})
    path = tmp_path / "d.jsonl"
    path.write_bytes((good + "\n" + good[:-9] + "\n" + good + "\n").encode() + b"\xff\xfe\n")
    argv = ["--data_path", str(path), "--model_name_or_path", str(vendored_tokenizer_dir("llama2")),
            "--version", "v1", "--no_progress"]
    assert check.main(argv) == 0
    out = capsys.readouterr().out
    assert "samples: 4, usable: 2, skipped: 2" in out
    assert "bad_json_line: 2" in out and "first ids: ['d.jsonl:2', 'd.jsonl:4']" in out
    assert check.main(argv + ["--strict"]) == 1


def test_bad_json_in_mixture_names_file_line_and_entry(tmp_path, capsys):
    (tmp_path / "ok.json").write_text("[]")
    (tmp_path / "cut.json").write_text('[\n  {"id": "a",\n   "conversations": [')
    mix = tmp_path / "mix.yaml"
    mix.write_text("datasets:\n  - json_path: ok.json\n  - json_path: cut.json\n")
    argv = ["--data_path", str(mix), "--model_name_or_path", str(vendored_tokenizer_dir("llama2")),
            "--version", "v1", "--no_progress"]
    assert check.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cut.json'}:3:" in err and f"(in mixture {mix}, entry 2)" in err


def test_check_defaults_are_training_defaults():
    """Every flag the check shares with train.py has train.py's default (one constant, two parsers)."""
    from llava.train.arguments import parse_args

    model_args, data_args, training_args = parse_args(["--output_dir", "unused", "--use_cpu", "True"])
    args = check.parse_args(["--data_path", "x", "--model_name_or_path", "y"])
    train_defaults = {**vars(model_args), **vars(data_args), "model_max_length": training_args.model_max_length}
    shared = ["version", "model_max_length", "vision_tower", "image_aspect_ratio", "image_grid_pinpoints",
              "mm_patch_merge_type", "mm_vision_select_feature", "image_folder"]
    assert {k: vars(args)[k] for k in shared} == {k: train_defaults[k] for k in shared}
    assert (args.image_aspect_ratio, args.mm_patch_merge_type, args.model_max_length) == ("square", "flat", 512)
