"""With the LLM frozen (projector stage), text-only samples reach no trained weight.

A batch of them would crash `backward()` mid-run ("does not require grad"),
so the dataset skips and counts them then (strict mode: fails with the id),
and `train.py` tells it when the LLM is frozen.
"""

import json
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from llava.anyres import ImageLayout, default_grid_pinpoints, to_pinpoint_tuple
from llava.data.dataset import LazySupervisedDataset
from llava.data.problems import DataProblem


def _turns(question, answer="A."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def mixed(tmp_path):
    Image.new("RGB", (80, 60), (10, 200, 30)).save(tmp_path / "ok.jpg")
    records = [
        {"id": "img", "image": "ok.jpg", "conversations": _turns("<image>\nQ")},
        {"id": "text1", "conversations": _turns("Q")},
        {"id": "text2", "conversations": _turns("Q2")},
        {"id": "text_noreply", "conversations": [{"from": "human", "value": "Q"}]},  # its own problem wins
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return tmp_path


def _dataset(folder, tokenizer, require_images, strict=False):
    return LazySupervisedDataset(
        str(folder / "d.json"), tokenizer, version="v1", max_length=512, image_folder=str(folder), strict=strict,
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}),
        layout=ImageLayout(56, 14, to_pinpoint_tuple(default_grid_pinpoints(56)), "anyres", "spatial_unpad"),
        require_images=require_images,
    )


def test_text_only_skipped_and_counted_when_llm_frozen(mixed, tokenizers):
    data = _dataset(mixed, tokenizers("llama2"), require_images=True)
    assert len(data) == 1
    assert dict(data.problems.counts) == {"text_only_frozen_llm": 2, "no_reply": 1}
    assert data.problems.examples["text_only_frozen_llm"] == ["text1", "text2"]
    assert "text_only_frozen_llm=2" in data.problems.summary(kept=1)


def test_text_only_kept_when_llm_trains(mixed, tokenizers):
    data = _dataset(mixed, tokenizers("llama2"), require_images=False)
    assert len(data) == 3 and dict(data.problems.counts) == {"no_reply": 1}


def test_strict_names_the_sample(mixed, tokenizers):
    with pytest.raises(DataProblem, match="text1.*text_only_frozen_llm"):
        _dataset(mixed, tokenizers("llama2"), require_images=True, strict=True)
