"""`--packing True` under DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo), two processes. Slow: minutes.

ZeRO-2: the packed pretrain run logs the padded run's losses. ZeRO-3 with
mixed image / text data: the modality guard still applies (every step one
modality on all ranks) and the packed finetune trains and saves.
"""

import ast
import json

import pytest

from test_train_distributed import _launch
from train_support import REPO, finetune_argv, make_data, pretrain_argv

pytestmark = pytest.mark.slow


def _losses(log: str) -> list[float]:
    return [float(ast.literal_eval(line)["loss"]) for line in log.splitlines() if line.startswith("{'loss'")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("packing_dist_data"))


def test_zero2_packed_pretrain_losses_equal_padded(tiny_llama_dir, tiny_clip_dir, data, tmp_path):
    flags = dict(max_steps=2, save_strategy="no", per_device_train_batch_size=2, deepspeed=REPO / "scripts" / "zero2.json")
    padded = _launch("deepspeed", "llava/train/train_mem.py",
                     pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "padded", **flags))
    packed = _launch("deepspeed", "llava/train/train_mem.py",
                     pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "packed", packing=True, **flags))
    a, b = _losses(padded), _losses(packed)
    assert len(a) == len(b) == 2
    assert all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    assert "'padding_share': '0'" in packed or "'padding_share': 0.0" in packed


def test_zero3_packed_finetune_mixed_modalities(tiny_llama_dir, tiny_clip_dir, data, tmp_path):
    out = tmp_path / "z3"
    projector = tmp_path / "pre" / "mm_projector.bin"
    _launch("deepspeed", "llava/train/train_mem.py",
            pretrain_argv(tiny_llama_dir, tiny_clip_dir, data, tmp_path / "pre", max_steps=1, save_strategy="no",
                          per_device_train_batch_size=1, deepspeed=REPO / "scripts" / "zero2.json"))
    _launch("deepspeed", "llava/train/train_mem.py",
            finetune_argv(tiny_llama_dir, tiny_clip_dir, data, out, projector, max_steps=2, save_strategy="no",
                          per_device_train_batch_size=2, packing=True, group_by_modality_length=True,
                          learning_rate=1e-4, deepspeed=REPO / "scripts" / "zero3.json"))
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "model.safetensors").is_file() or list(out.glob("model*.safetensors"))
