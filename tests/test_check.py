"""`python -m llava.data.check`: the preflight report and --strict exit code."""

import json

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
