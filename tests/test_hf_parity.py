"""Our LLaVA model vs transformers' LlavaNextForConditionalGeneration (issue 2, acceptance 3 and 4).

A tiny random model of ours is mapped with `llava.export.hf_mapping.llava_to_hf`;
transformers' inputs come from its own `LlavaNextProcessor`, ours from LLaVA's
entry points (`tokenizer_image_token`, `process_images`, PIL `image.size`).
Equal logits prove the weight mapping, the tiling, the token counts and the
splice at once.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.export.hf_mapping import check_expressible, hf_state_dict_from_llava, llava_to_hf

TOL = dict(atol=5e-5, rtol=1e-4)


def make_llava(llm_dir, tower_dir, family, seed=0):
    """Our model from a tiny LLM + tower folder, set up like `train.py` does for LLaVA-NeXT."""
    from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    cls = LlavaQwenForCausalLM if family == "qwen2" else LlavaLlamaForCausalLM
    model = cls.from_pretrained(llm_dir, dtype=torch.float32)
    args = SimpleNamespace(
        vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres", image_grid_pinpoints=None,
    )
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "anyres"
    return model.eval()


def hf_processor(model, tokenizer):
    """transformers' LlavaNextProcessor configured like our tower's processor and config."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    ours = model.get_vision_tower().image_processor
    size = dict(ours.size)
    image_processor = LlavaNextImageProcessorPil(
        size=size, crop_size=dict(getattr(ours, "crop_size", None) or size),
        do_center_crop=bool(getattr(ours, "do_center_crop", False)), resample=ours.resample,
        image_mean=list(ours.image_mean), image_std=list(ours.image_std),
        image_grid_pinpoints=model.config.image_grid_pinpoints,
    )
    clip = model.config.mm_vision_config["model_type"] == "clip_vision_model"
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=model.config.mm_vision_config["patch_size"],
        vision_feature_select_strategy="default" if clip else "full", num_additional_image_tokens=1 if clip else 0,
    )


def image(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=[("llama", "clip"), ("qwen2", "siglip")], ids=["llama-clip", "qwen2-siglip"])
def pair(request, tiny_llama_dir, tiny_qwen_dir, tiny_clip_dir, tiny_siglip_dir, tokenizers):
    """(our model, the mapped transformers model, the HF processor, tokenizer with '<image>', image id)."""
    llm, tower = request.param
    model = make_llava(tiny_llama_dir if llm == "llama" else tiny_qwen_dir,
                       tiny_clip_dir if tower == "clip" else tiny_siglip_dir, llm)
    tokenizer = tokenizers("llama2" if llm == "llama" else "qwen2")
    assert len(tokenizer) == model.config.vocab_size
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    hf = llava_to_hf(model)
    assert hf.config.image_token_id == image_id == model.config.vocab_size
    return SimpleNamespace(model=model, hf=hf, processor=hf_processor(model, tokenizer), tokenizer=tokenizer,
                           image_id=image_id)


def expand_markers(ids, counts, image_id):
    """Our ids with the i-th IMAGE_TOKEN_INDEX replaced by counts[i] copies of transformers' image id."""
    out, counts = [], list(counts)
    for t in ids:
        out += [image_id] * counts.pop(0) if t == IMAGE_TOKEN_INDEX else [t]
    assert not counts, "more images than markers"
    return out


def compare(p, prompts, images_per_prompt):
    """Run both models on the same prompts/images (left-padded batch) and compare logits at real tokens."""
    flat = [im for ims in images_per_prompt for im in ims]
    p.processor.tokenizer.padding_side = "left"
    hf_in = p.processor(text=prompts, images=flat or None, return_tensors="pt", padding=True)
    mask = hf_in["attention_mask"]
    layout = p.model.get_image_layout()

    rows = [tokenizer_image_token(text, p.tokenizer) for text in prompts]
    for row, hf_ids, m, ims in zip(rows, hf_in["input_ids"].tolist(), mask.tolist(), images_per_prompt):
        counts = [layout.num_tokens((im.height, im.width)) for im in ims]
        # Same text tokens, and our token count per image equals what the processor inserts.
        assert expand_markers(row, counts, p.image_id) == [t for t, keep in zip(hf_ids, m) if keep]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[p.tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    p.model.config.tokenizer_padding_side = "left"
    kwargs = {}
    if flat:
        kwargs = dict(images=process_images(flat, p.model.get_vision_tower().image_processor, p.model.config),
                      image_sizes=[im.size for im in flat])
    with torch.no_grad():
        ours = p.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        theirs = p.hf(**hf_in, position_ids=positions).logits
    assert ours.shape[:2] == theirs.shape[:2]
    real = mask.bool()
    vocab = p.model.config.vocab_size
    torch.testing.assert_close(ours[real], theirs[real][:, :vocab], **TOL)
    return ours, theirs


PROMPT = "A chat. USER: <image>\nWhat is shown here? ASSISTANT:"


@pytest.mark.parametrize("size", [(1, 1), (40, 90), (300, 200)], ids=["1x1", "40x90", "300x200"])
def test_single_image_logits(pair, size):
    compare(pair, [PROMPT], [[image(*size, seed=1)]])


def test_several_images_in_one_sample(pair):
    prompt = "USER: <image>\nand <image><image>\nCompare them. ASSISTANT:"
    compare(pair, [prompt], [[image(300, 200, 2), image(1, 1, 3), image(40, 90, 4)]])


def test_no_image(pair):
    compare(pair, ["USER: Tell me a story. ASSISTANT:"], [[]])


def test_left_padded_batch(pair):
    prompts = [PROMPT, "USER: <image>\nA longer question about the picture, please? ASSISTANT:", "USER: hi ASSISTANT:"]
    ours, theirs = compare(pair, prompts, [[image(90, 40, 5)], [image(300, 200, 6)], []])
    assert ours.shape[0] == 3


def test_greedy_generate_matches(pair):
    """LLaVA's inference path (conversation prompt, tokenizer_image_token, process_images) vs transformers' generate."""
    conv = conv_templates["v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    picture = image(120, 70, seed=7)
    model, tok = pair.model, pair.tokenizer
    input_ids = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    pixels = process_images([picture], model.get_vision_tower().image_processor, model.config)
    common = dict(do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        ours = model.generate(input_ids, images=pixels, image_sizes=[picture.size], **common)
        hf_in = pair.processor(text=[prompt], images=[picture], return_tensors="pt")
        theirs = pair.hf.generate(**hf_in, **common)[:, hf_in["input_ids"].shape[1]:]
    assert ours.shape == (1, 8)
    assert ours.tolist() == theirs.tolist()


# ---------------------------------------------------------------- mapping checks


def test_tied_embeddings_map_tied(tiny_llama_dir, tiny_clip_dir):
    """Small Qwen2/Llama models tie lm_head to the embeddings; the mapped model must too."""
    model = make_llava(tiny_llama_dir, tiny_clip_dir, "llama")
    model.config.tie_word_embeddings = True
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        llava_to_hf(model)
    model.lm_head.weight = model.get_model().embed_tokens.weight
    hf = llava_to_hf(model)
    assert hf.lm_head.weight is hf.get_input_embeddings().weight
    ids = torch.tensor([[1, 3148, 1001, 29901, 15043, 29889]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, hf(input_ids=ids).logits[..., :-1], **TOL)


def test_mapping_pads_vocab_with_mean_rows_and_names_leftovers(tiny_llama_dir, tiny_clip_dir):
    model = make_llava(tiny_llama_dir, tiny_clip_dir, "llama")
    sd = model.state_dict()
    vocab = model.config.vocab_size
    mapped = hf_state_dict_from_llava(sd, model.config, vocab_size=vocab + 2)
    embed = mapped["model.language_model.embed_tokens.weight"]
    assert embed.shape[0] == vocab + 2
    assert torch.equal(embed[:vocab], sd["model.embed_tokens.weight"])
    torch.testing.assert_close(embed[vocab:], sd["model.embed_tokens.weight"].mean(0).expand(2, -1))
    torch.testing.assert_close(mapped["lm_head.weight"][vocab:], sd["lm_head.weight"].mean(0).expand(2, -1))
    assert torch.equal(mapped["model.multi_modal_projector.linear_2.bias"], sd["model.mm_projector.2.bias"])
    assert torch.equal(mapped["model.image_newline"], sd["model.image_newline"])

    with pytest.raises(ValueError, match="model.extra_thing"):
        hf_state_dict_from_llava({**sd, "model.extra_thing": torch.zeros(1)}, model.config)
    partial = {k: v for k, v in sd.items() if not k.startswith("model.mm_projector.0.")}
    with pytest.raises(ValueError, match="linear_1"):
        hf_state_dict_from_llava(partial, model.config)


@pytest.mark.parametrize(
    "attr, value, message",
    [("mm_patch_merge_type", "flat", "mm_patch_merge_type='flat'"),
     ("mm_projector_type", "linear", "mm_projector_type='linear'"),
     ("image_aspect_ratio", "pad", "image_aspect_ratio='pad'")],
)
def test_inexpressible_configs_raise(tiny_llama_dir, tiny_clip_dir, attr, value, message):
    from llava.model import LlavaConfig

    config = LlavaConfig.from_pretrained(tiny_llama_dir)
    config.mm_vision_config = {"model_type": "clip_vision_model", "image_size": 56, "patch_size": 14, "hidden_size": 32}
    config.mm_projector_type, config.mm_patch_merge_type = "mlp2x_gelu", "spatial_unpad"
    config.image_aspect_ratio = "anyres"
    config.mm_vision_select_layer, config.mm_vision_select_feature = -2, "patch"
    check_expressible(config)  # the baseline is fine
    setattr(config, attr, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_expressible(config)
