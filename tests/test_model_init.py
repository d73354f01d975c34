"""`image_newline` is initialised when missing from a checkpoint, and kept when present."""

from types import SimpleNamespace

import torch

from llava.model import LlavaLlamaForCausalLM


def _stage1(llm_dir, tower_dir):
    model = LlavaLlamaForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    model.get_model().initialize_vision_modules(
        SimpleNamespace(
            vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
            pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
        )
    )
    return model


def test_fresh_newline_is_small_random_not_garbage(tiny_llama_dir, tiny_clip_dir):
    config = _stage1(tiny_llama_dir, tiny_clip_dir).config
    # A llava config over a plain LLM folder: the newline is not in the file.
    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llama_dir, config=config, dtype=torch.float32)
    newline = model.get_model().image_newline.detach()
    assert torch.isfinite(newline).all()
    assert 0.05 < float(newline.std()) < 0.25  # N(0, 1/hidden) with hidden=64 -> std 0.125


def test_saved_newline_survives_reload(tiny_llama_dir, tiny_clip_dir, tmp_path):
    model = _stage1(tiny_llama_dir, tiny_clip_dir)
    with torch.no_grad():
        model.get_model().image_newline.fill_(3.0)
    model.save_pretrained(tmp_path)
    again = LlavaLlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(again.get_model().image_newline, torch.full((64,), 3.0))
