"""The image splice: token counts, transformers' packing order, batching, labels, errors, gradients."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

from llava.anyres import ImageLayout, default_grid_pinpoints
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM
from llava.model.splice import pack_image_features, splice_batch

M = IMAGE_TOKEN_INDEX
TILE = 56
SIZES_HW = [(56, 56), (100, 150), (150, 100), (9, 2000), (2000, 9), (1, 1), (300, 300), (57, 111), (168, 57)]


def vision_args(tower_dir, **overrides):
    args = dict(
        vision_tower=str(tower_dir),
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None,
        mm_projector_type="mlp2x_gelu",
        mm_patch_merge_type="spatial_unpad",
    )
    args.update(overrides)
    return SimpleNamespace(**args)


def make_model(cls, llm_dir, tower_dir, **overrides):
    torch.manual_seed(0)
    model = cls.from_pretrained(llm_dir, attn_implementation="sdpa")
    model.get_model().initialize_vision_modules(vision_args(tower_dir, **overrides))
    return model.eval()


@pytest.fixture(scope="module")
def llama_clip(tiny_llama_dir, tiny_clip_dir):
    return make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir)


def tiles_for(layout, size_hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layout.num_tiles(size_hw), 3, TILE, TILE, generator=g)


def layout_for(merge_type="spatial_unpad", aspect="anyres"):
    return ImageLayout(TILE, 14, tuple(map(tuple, default_grid_pinpoints(TILE))), aspect, merge_type, "patch")


@pytest.mark.parametrize("size_hw", SIZES_HW)
def test_pack_order_equals_transformers_llava_next(size_hw):
    layout, hidden = layout_for(), 8
    features = torch.randn(layout.num_tiles(size_hw), layout.tokens_per_tile, hidden)
    newline = torch.randn(hidden)
    stub = SimpleNamespace(
        config=SimpleNamespace(
            vision_config=SimpleNamespace(image_size=TILE, patch_size=14),
            image_grid_pinpoints=[list(p) for p in layout.grid_pinpoints],
        )
    )
    expected, lens = LlavaNextModel.pack_image_features(stub, [features], torch.tensor([size_hw]), "default", newline)
    ours = pack_image_features(features, size_hw, layout, newline)
    torch.testing.assert_close(ours, expected[0], rtol=0, atol=0)
    assert ours.shape[0] == int(lens[0]) == layout.num_tokens(size_hw)


@pytest.mark.parametrize("merge_type", ["flat", "spatial"])
def test_pack_other_merges_count_and_order(merge_type):
    layout, size_hw = layout_for(merge_type), (56, 112)  # a 1x2 grid
    n = layout.patches_per_side
    assert layout.grid_shape(size_hw) == (1, 2)
    features = torch.arange(3 * n * n, dtype=torch.float32).view(3, n * n, 1)
    packed = pack_image_features(features, size_hw, layout)
    assert packed.shape[0] == layout.num_tokens(size_hw) == 3 * n * n
    if merge_type == "flat":
        assert packed[:, 0].tolist() == list(range(3 * n * n))
    else:  # base tile, then the first feature row runs across both grid tiles
        assert packed[n * n : n * n + 2 * n, 0].tolist() == list(range(16, 20)) + list(range(32, 36))


def test_pack_non_anyres_adds_newline_only_for_unpad():
    features, newline = torch.randn(1, 16, 4), torch.randn(4)
    pad_unpad = pack_image_features(features, None, layout_for("spatial_unpad", "pad"), newline)
    assert pad_unpad.shape == (17, 4) and torch.equal(pad_unpad[-1], newline)
    assert pack_image_features(features, None, layout_for("flat", "pad")).shape == (16, 4)


def _hand_batch():
    ids = torch.tensor([[1, M, 5, M, 6], [1, 7, 8, 0, 0], [1, M, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    text = ids.clamp(min=0).float()[..., None].expand(-1, -1, 2)
    images = [torch.full((2, 2), 100.0), torch.full((3, 2), 101.0), torch.full((1, 2), 102.0)]
    return ids, mask, text, images


@pytest.mark.parametrize("side", ["right", "left"])
def test_splice_several_images_text_only_and_mixed_rows(side):
    ids, mask, text, images = _hand_batch()
    embeds, new_mask, positions, labels = splice_batch(ids, text, images, mask, ids.clone(), side)
    rows = [[1, 100, 100, 5, 101, 101, 101, 6], [1, 7, 8], [1, 102, 9]]
    row_labels = [[1, -100, -100, 5, -100, -100, -100, 6], [1, 7, 8], [1, -100, 9]]
    assert embeds.shape == (3, 8, 2)
    for b, row in enumerate(rows):
        span = slice(8 - len(row), 8) if side == "left" else slice(0, len(row))
        assert embeds[b, span, 0].tolist() == row
        assert new_mask[b].sum() == len(row) and new_mask[b, span].all()
        assert positions[b, span].tolist() == list(range(len(row)))
        assert labels[b, span].tolist() == row_labels[b]
        assert (labels[b][~new_mask[b]] == IGNORE_INDEX).all()
        assert (embeds[b][~new_mask[b]] == 0).all()


def test_splice_truncates_to_max_length():
    ids, mask, text, images = _hand_batch()
    embeds, new_mask, _, labels = splice_batch(ids, text, images, mask, ids.clone(), "right", max_length=4)
    assert embeds.shape[1] == 4 and embeds[0, :, 0].tolist() == [1, 100, 100, 5]
    assert labels[0].tolist() == [1, -100, -100, 5]


def test_marker_image_mismatch_names_both_counts(llama_clip):
    ids, mask, text, images = _hand_batch()
    with pytest.raises(ValueError, match=r"3 image markers.*but 2 images"):
        splice_batch(ids, text, images[:2], mask)
    layout = llama_clip.get_image_layout()
    two_markers = torch.tensor([[1, M, 5, M]])
    with pytest.raises(ValueError, match=r"2 image markers.*but 1 images"):
        llama_clip(input_ids=two_markers, images=[tiles_for(layout, (56, 56))], image_sizes=[(56, 56)])
    with pytest.raises(ValueError, match=r"2 image markers.*but 0 images"):
        llama_clip(input_ids=two_markers)


@pytest.mark.parametrize("size_hw", [(56, 56), (100, 150), (2000, 9), (57, 111)])
def test_model_splices_layout_num_tokens(llama_clip, size_hw):
    layout = llama_clip.get_image_layout()
    ids = torch.tensor([[1, 5, M, 7]])
    out = llama_clip.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, None, [tiles_for(layout, size_hw)], [size_hw[::-1]]
    )
    assert out[0] is None and out[4].shape[1] == 3 + layout.num_tokens(size_hw)


@pytest.mark.parametrize("side", ["right", "left"])
def test_mixed_batch_rows_match_single_rows(llama_clip, side):
    """Each row of a padded mixed batch gives the logits it gives alone."""
    layout = llama_clip.get_image_layout()
    sizes_wh = [(150, 100), (56, 56), (9, 2000)]
    images = [tiles_for(layout, s[::-1], seed=i) for i, s in enumerate(sizes_wh)]
    ids = torch.tensor([[1, M, 5, M, 6], [1, 7, 8, 9, 0], [1, 9, M, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [4], [3]])).long()
    llama_clip.config.tokenizer_padding_side = side
    try:
        with torch.no_grad():
            out = llama_clip(input_ids=ids, attention_mask=mask, images=images, image_sizes=sizes_wh)
            _, _, new_mask, *_ = llama_clip.prepare_inputs_labels_for_multimodal(
                ids, None, mask, None, None, images, sizes_wh
            )
            # (row, its images, its real length)
            for b, img_span, n in [(0, slice(0, 2), 5), (1, slice(2, 2), 4), (2, slice(2, 3), 3)]:
                alone = llama_clip(
                    input_ids=ids[b : b + 1, :n], images=images[img_span], image_sizes=sizes_wh[img_span]
                )
                torch.testing.assert_close(out.logits[b][new_mask[b].bool()], alone.logits[0], rtol=1e-4, atol=1e-4)
    finally:
        del llama_clip.config.tokenizer_padding_side


def test_loss_finite_and_grads_reach_projector_not_frozen_tower(tiny_llama_dir, tiny_clip_dir):
    model = make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir).train()
    layout = model.get_image_layout()
    ids = torch.tensor([[1, M, 5, 6, 7], [1, 8, 9, 10, 11]])
    labels = torch.tensor([[IGNORE_INDEX, M, 5, 6, 7], [1, 8, 9, 10, 11]])
    out = model(input_ids=ids, labels=labels, images=[tiles_for(layout, (100, 150))], image_sizes=[(150, 100)])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    inner = model.get_model()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in inner.mm_projector.parameters())
    assert inner.image_newline.grad is not None and inner.image_newline.grad.abs().sum() > 0
    assert all(p.grad is None for p in inner.vision_tower.parameters())
    inner.vision_tower.requires_grad_(True)  # unfrozen, the tower trains
    again = model(input_ids=ids, labels=labels, images=[tiles_for(layout, (100, 150))], image_sizes=[(150, 100)])
    again.loss.backward()
    assert inner.vision_tower.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_generate_returns_greedy_new_tokens(llama_clip):
    layout = llama_clip.get_image_layout()
    ids, image, size = torch.tensor([[1, 5, M, 7]]), [tiles_for(layout, (100, 150))], [(150, 100)]
    new = llama_clip.generate(ids, images=image, image_sizes=size, max_new_tokens=4, do_sample=False)
    cur = ids
    with torch.no_grad():
        for _ in range(4):
            nxt = llama_clip(input_ids=cur, images=image, image_sizes=size).logits[:, -1].argmax(-1, keepdim=True)
            cur = torch.cat([cur, nxt], dim=1)
    assert new.tolist() == cur[:, 4:].tolist()


def test_plain_llm_loads_bit_identical_and_trains_with_checkpointing(tiny_llama_dir, tiny_clip_dir):
    plain = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    model = make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir).train()
    ours = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(ours[name], p), name
    model.requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layout = model.get_image_layout()
    ids = torch.tensor([[1, M, 5, 6]])
    out = model(input_ids=ids, labels=ids, images=[tiles_for(layout, (56, 56))], image_sizes=[(56, 56)])
    out.loss.backward()
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is None


def test_save_reload_keys_and_logits(llama_clip, tmp_path):
    llama_clip.save_pretrained(tmp_path / "ckpt")
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "ckpt" / "model.safetensors"))
    assert {"model.image_newline", "model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight"} <= keys
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert not any(".vision_model.vision_model." in k for k in keys)
    again = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    again.save_pretrained(tmp_path / "ckpt2")
    assert set(load_file(tmp_path / "ckpt2" / "model.safetensors")) == keys
    layout = llama_clip.get_image_layout()
    batch = dict(input_ids=torch.tensor([[1, M, 5]]), images=[tiles_for(layout, (57, 111))], image_sizes=[(111, 57)])
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, llama_clip(**batch).logits, rtol=0, atol=0)


def test_pretrain_adapter_roundtrip(llama_clip, tiny_llama_dir, tiny_clip_dir, tmp_path):
    inner = llama_clip.get_model()
    weights = {f"model.mm_projector.{k}": v for k, v in inner.mm_projector.state_dict().items()}
    weights["model.image_newline"] = inner.image_newline.detach()
    torch.save(weights, tmp_path / "mm_projector.bin")
    torch.manual_seed(123)
    adapter = str(tmp_path / "mm_projector.bin")
    other = make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir, pretrain_mm_mlp_adapter=adapter)
    for k, v in inner.mm_projector.state_dict().items():
        assert torch.equal(other.get_model().mm_projector.state_dict()[k], v)
    assert torch.equal(other.get_model().image_newline, inner.image_newline)


def test_qwen_siglip_flat(tiny_qwen_dir, tiny_siglip_dir):
    model = make_model(LlavaQwenForCausalLM, tiny_qwen_dir, tiny_siglip_dir, mm_patch_merge_type="flat").train()
    assert getattr(model.get_model(), "image_newline", None) is None
    layout = model.get_image_layout()
    assert layout.tokens_per_tile == 16
    ids = torch.tensor([[1, M, 5, 6, 7]])
    assert layout.grid_shape((56, 112)) == (1, 2)
    out = model(input_ids=ids, labels=ids, images=[tiles_for(layout, (56, 112))], image_sizes=[(112, 56)])
    assert out.logits.shape[1] == 4 + 3 * 16 and torch.isfinite(out.loss)
