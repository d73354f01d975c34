"""lmms-eval's `llava` adapter (what LLaVA-NeXT evaluates with), unchanged, on our checkpoint on CPU.

Skipped when lmms-eval is not installed (`pip install lmms-eval` pulls in
datasets/evaluate; the adapter itself needs only loguru, pytz, evaluate).
The adapter reaches the CPU only through `load_pretrained_model(...,
device_map="auto")`, which must fall back to it.
"""

from __future__ import annotations

import math

import pytest
from PIL import Image

from eval_support import build_checkpoint, demo_images
from llava.demo.data import QUESTION

lmms_llava = pytest.importorskip("lmms_eval.models.simple.llava", reason="lmms-eval is not installed")
from lmms_eval.api.instance import Instance  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama_dir, tiny_clip_dir, tokenizers):
    root = tmp_path_factory.mktemp("lmms")
    ckpt = build_checkpoint(root / "llava-tiny", tiny_llama_dir, tiny_clip_dir, tokenizers("llama2"))
    images = demo_images(root / "images", 4)
    docs = [{"image": Image.open(root / "images" / name).convert("RGB"), "colour": colour} for name, colour in images]
    return ckpt, docs


def adapter(ckpt, docs, batch_size):
    with pytest.warns(UserWarning, match="CUDA is not available: loading on the CPU in float32"):
        model = lmms_llava.Llava(pretrained=str(ckpt), device="cpu", device_map="auto", batch_size=batch_size,
                                 conv_template="vicuna_v1")
    model.task_dict = {"demo": {"test": docs}}
    return model


def requests(kind, docs, second):
    def visual(doc):
        return [doc["image"]]

    return [Instance(kind, (QUESTION, second(doc), visual, i, "demo", "test"), idx=0,
                     metadata={"task": "demo", "doc_id": i, "repeats": 1}) for i, doc in enumerate(docs)]


def test_generate_until_batch_1_and_3_equal_ours(setup):
    from llava.eval.engine import Answerer
    from types import SimpleNamespace

    ckpt, docs = setup
    gen = {"max_new_tokens": 8, "temperature": 0, "until": ["</s>"]}
    outputs = {bs: adapter(ckpt, docs, bs).generate_until(requests("generate_until", docs, lambda d: dict(gen)))
               for bs in (1, 3)}
    assert outputs[1] == outputs[3] and all(outputs[1])
    ours = Answerer(SimpleNamespace(model_path=str(ckpt), model_base=None, conv_mode="vicuna_v1", temperature=0,
                                    top_p=None, num_beams=1, max_new_tokens=8, device="cpu"))
    assert ours.answer([(QUESTION, d["image"]) for d in docs]) == outputs[1]


def test_loglikelihood(setup):
    ckpt, docs = setup
    results = adapter(ckpt, docs, 1).loglikelihood(requests("loglikelihood", docs, lambda d: d["colour"]))
    assert len(results) == len(docs)
    assert all(math.isfinite(loss) and loss > 0 and isinstance(greedy, bool) for loss, greedy in results)
