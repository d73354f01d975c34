"""Vision towers (CLIP / SigLIP, chosen by config) and projectors."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import CLIPVisionModel, SiglipVisionModel

from llava.vision_config import read_vision_config
from llava.model.projector import IdentityMap, build_vision_projector
from llava.model.vision_tower import build_vision_tower

TILES = 3
PATCHES = (56 // 14) ** 2


@pytest.fixture(scope="module")
def tiles():
    return torch.randn(TILES, 3, 56, 56, generator=torch.Generator().manual_seed(0))


def test_clip_select_layer_and_feature_match_hf_hidden_states(tiny_clip_dir, tiles):
    reference = CLIPVisionModel.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        hidden = reference(tiles, output_hidden_states=True).hidden_states
    cases = [(-2, "patch", hidden[-2][:, 1:]), (-1, "patch", hidden[-1][:, 1:]), (-2, "cls_patch", hidden[-2])]
    for layer, feature, expected in cases:
        tower = build_vision_tower(tiny_clip_dir, select_layer=layer, select_feature=feature).eval()
        out = tower(tiles)
        assert out.shape == (TILES, PATCHES + (feature == "cls_patch"), 32)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert type(tower.vision_tower) is CLIPVisionModel
    assert tower.hidden_size == 32 and tower.num_patches_per_side == 4 and tower.is_loaded
    assert type(tower.image_processor).__name__.startswith("CLIPImageProcessor")


def test_siglip_has_no_cls_and_rejects_cls_patch(tiny_siglip_dir, tiles):
    tower = build_vision_tower(tiny_siglip_dir).eval()
    reference = SiglipVisionModel.from_pretrained(tiny_siglip_dir).eval()
    with torch.no_grad():
        expected = reference(tiles, output_hidden_states=True).hidden_states[-2]
    assert type(tower.vision_tower) is SiglipVisionModel
    torch.testing.assert_close(tower(tiles), expected, rtol=0, atol=0)
    assert tower(tiles).shape == (TILES, PATCHES, 32)
    with pytest.raises(ValueError, match="SigLIP"):
        build_vision_tower(tiny_siglip_dir, select_feature="cls_patch")


def test_family_comes_from_config_not_folder_name(tiny_clip_dir, tmp_path):
    misleading = shutil.copytree(tiny_clip_dir, tmp_path / "siglip-so400m-patch14-384")
    assert type(build_vision_tower(misleading).vision_tower) is CLIPVisionModel


def test_tower_from_stored_config_has_random_weights_and_settable_processor(tiny_clip_dir, tiles):
    tower = build_vision_tower(read_vision_config(tiny_clip_dir))
    assert tower.is_loaded and tower.image_processor is None
    assert tower(tiles).shape == (TILES, PATCHES, 32)
    tower.set_image_processor(tiny_clip_dir)
    assert tower.image_processor.crop_size["height"] == 56
    config = SimpleNamespace(mm_vision_tower="/nowhere", mm_vision_config=read_vision_config(tiny_clip_dir),
                             mm_vision_select_layer=-1, mm_vision_select_feature="cls_patch")
    from_model_config = build_vision_tower(config)
    assert from_model_config.select_layer == -1 and from_model_config(tiles).shape == (TILES, PATCHES + 1, 32)


def test_frozen_tower_gives_no_grad_features_and_unfrozen_does(tiny_clip_dir, tiles):
    tower = build_vision_tower(tiny_clip_dir)
    assert not any(p.requires_grad for p in tower.parameters())
    assert not tower(tiles).requires_grad
    tower.requires_grad_(True)
    assert tower(tiles).requires_grad


def test_delay_load_builds_nothing_until_load_model(tiny_clip_dir):
    tower = build_vision_tower(tiny_clip_dir, delay_load=True)
    assert not tower.is_loaded and len(list(tower.parameters())) == 0 and tower.hidden_size == 32
    tower.load_model()
    assert tower.is_loaded and type(tower.vision_tower) is CLIPVisionModel


def projector_config(kind, vision=32, hidden=64):
    return SimpleNamespace(mm_projector_type=kind, mm_hidden_size=vision, hidden_size=hidden)


def test_projector_layouts():
    linear = build_vision_projector(projector_config("linear"))
    assert isinstance(linear, nn.Linear) and tuple(linear.weight.shape) == (64, 32)
    mlp2 = build_vision_projector(projector_config("mlp2x_gelu"))
    assert [type(m) for m in mlp2] == [nn.Linear, nn.GELU, nn.Linear]
    assert sorted(mlp2.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert tuple(mlp2[0].weight.shape) == (64, 32) and tuple(mlp2[2].weight.shape) == (64, 64)
    assert len(build_vision_projector(projector_config("mlp3x_gelu"))) == 5
    identity = build_vision_projector(projector_config("identity", 64, 64))
    x = torch.randn(2, 64)
    assert isinstance(identity, IdentityMap) and identity(x) is x


@pytest.mark.parametrize("kind,vision", [("conv", 32), ("mlp0x_gelu", 32), ("identity", 32)])
def test_projector_rejects_bad_types(kind, vision):
    with pytest.raises(ValueError, match=kind.split("_")[0]):
        build_vision_projector(projector_config(kind, vision))
