"""Our LLaVA config and weights -> transformers' `LlavaNextForConditionalGeneration`.

The weight converter and the parity tests both go through here, so a model
trained with this package is checked against exactly the layout users load.
transformers' LlavaNext can express only one LLaVA-NeXT setting (anyres tiles,
`spatial_unpad` with a newline, a two-layer GELU projector); anything else is
refused with the offending value named rather than converted into a model that
silently computes something different.
"""

from __future__ import annotations

import torch

from llava.anyres import ImageLayout

LLM_TYPES = {"llava_llama": "llama", "llava_qwen": "qwen2"}
"""Our config `model_type` -> the plain transformers LLM `model_type` it extends."""

VISION_TYPES = ("clip_vision_model", "siglip_vision_model")

_OUR_TOWER = "model.vision_tower.vision_tower."
_PROJECTOR = {"model.mm_projector.0.": "model.multi_modal_projector.linear_1.",
              "model.mm_projector.2.": "model.multi_modal_projector.linear_2."}
_EMBED_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")


def llm_model_type(config) -> str:
    """Plain LLM family ('llama' / 'qwen2') under our config, from `model_type`, else its class."""
    from transformers import LlamaConfig, Qwen2Config

    kind = getattr(config, "model_type", None)
    if kind in LLM_TYPES:
        return LLM_TYPES[kind]
    if kind in LLM_TYPES.values():
        return kind
    for cls, name in ((Qwen2Config, "qwen2"), (LlamaConfig, "llama")):
        if isinstance(config, cls):
            return name
    raise ValueError(f"cannot map LLM config model_type {kind!r} to llama or qwen2")


def _known_fields(config_cls, values: dict) -> dict:
    """Keep only the attributes a plain config class has (drops our mm_*/LLaVA extras)."""
    known = set(config_cls().to_dict())
    return {k: v for k, v in values.items() if k in known and k not in ("model_type", "architectures")}


def check_expressible(config) -> ImageLayout:
    """Raise unless LlavaNext in transformers computes what our config computes."""
    layout = ImageLayout.from_config(config)
    problems = []
    if not layout.is_anyres:
        problems.append(f"image_aspect_ratio={config.image_aspect_ratio!r} (needs 'anyres')")
    if layout.merge_type != "spatial_unpad":
        problems.append(f"mm_patch_merge_type={layout.merge_type!r} (needs 'spatial_unpad')")
    projector = getattr(config, "mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        problems.append(
            f"mm_projector_type={projector!r} (LlavaNextMultiModalProjector is linear-GELU-linear: needs 'mlp2x_gelu')"
        )
    vision_type = config.mm_vision_config.get("model_type")
    if vision_type not in VISION_TYPES:
        problems.append(f"vision tower model_type={vision_type!r} (needs one of {VISION_TYPES})")
    if layout.select_feature != "patch":
        problems.append(f"mm_vision_select_feature={layout.select_feature!r} (needs 'patch')")
    if not isinstance(getattr(config, "mm_vision_select_layer", -2), int):
        problems.append(f"mm_vision_select_layer={config.mm_vision_select_layer!r} (needs one int)")
    if problems:
        raise ValueError("transformers' LlavaNext cannot express this LLaVA config: " + "; ".join(problems))
    return layout


def hf_config_from_llava(config, image_token_id: int, vocab_size: int | None = None):
    """A `LlavaNextConfig` equivalent to our model config.

    `vocab_size` (default: the LLM's) lets the caller make room for a new
    `<image>` token; it may only grow the vocabulary.
    """
    from transformers import CONFIG_MAPPING, LlavaNextConfig

    layout = check_expressible(config)
    text_type = llm_model_type(config)
    text_cls = CONFIG_MAPPING[text_type]
    text_config = text_cls(**_known_fields(text_cls, config.to_dict()))
    if vocab_size is not None:
        if vocab_size < config.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the model's {config.vocab_size}")
        text_config.vocab_size = int(vocab_size)
    if not 0 <= image_token_id < text_config.vocab_size:
        raise ValueError(f"image_token_id {image_token_id} is outside the vocabulary (size {text_config.vocab_size})")

    vision = dict(config.mm_vision_config)
    vision_cls = CONFIG_MAPPING[vision["model_type"]]
    vision_config = vision_cls(**_known_fields(vision_cls, vision))
    # CLIP prepends a CLS embedding that 'patch' drops ('default'); SigLIP has none ('full').
    strategy = "default" if vision["model_type"] == "clip_vision_model" else "full"
    tie = bool(getattr(config, "tie_word_embeddings", False))
    text_config.tie_word_embeddings = tie
    return LlavaNextConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=int(image_token_id),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=int(config.mm_vision_select_layer),
        multimodal_projector_bias=True,
        tie_word_embeddings=tie,
        image_grid_pinpoints=[list(p) for p in layout.grid_pinpoints],
        image_seq_length=layout.patches_per_side**2,
    )


def _target_shapes(hf_config) -> dict:
    """State-dict keys and shapes of LlavaNext for `hf_config`, built on the meta device (no memory)."""
    from transformers import LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(hf_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _target_key(key: str, targets) -> str:
    """Our key -> LlavaNext's key; `targets` decides whether the tower keeps a `vision_model.` level."""
    if key.startswith(_OUR_TOWER):
        rest = key[len(_OUR_TOWER):]
        options = ["model.vision_tower." + rest]
        if rest.startswith("vision_model."):
            options.append("model.vision_tower." + rest[len("vision_model."):])
        return next((o for o in options if o in targets), options[0])
    for ours, theirs in _PROJECTOR.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if key == "model.image_newline" or key.startswith("lm_head."):
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return key


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean row, so logits over the old vocabulary do not change."""
    if rows == weight.shape[0]:
        return weight
    extra = weight.float().mean(dim=0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], dim=0)  # (rows, hidden)


def hf_state_dict_from_llava(state_dict: dict, config, vocab_size: int | None = None, hf_config=None) -> dict:
    """Our state dict renamed (and vocab-padded) into LlavaNext's layout.

    Every source tensor must land on exactly one target key and every target
    key must be filled; otherwise this raises naming the leftovers, so a new
    module can never be dropped silently.
    """
    if hf_config is None:
        hf_config = hf_config_from_llava(config, image_token_id=0, vocab_size=vocab_size)
    targets = _target_shapes(hf_config)
    rows = hf_config.text_config.vocab_size
    out, unused = {}, []
    for key, tensor in state_dict.items():
        new = _target_key(key, targets)
        if new not in targets:
            unused.append(key)
            continue
        if new in out:
            raise ValueError(f"two source tensors map to {new!r} (second: {key!r})")
        if new in _EMBED_KEYS:
            tensor = _pad_rows(tensor, rows)
        if tuple(tensor.shape) != targets[new]:
            raise ValueError(f"{key!r} -> {new!r}: shape {tuple(tensor.shape)} != expected {targets[new]}")
        out[new] = tensor
    if hf_config.tie_word_embeddings and "lm_head.weight" in out:
        if not torch.equal(out["lm_head.weight"], out["model.language_model.embed_tokens.weight"]):
            raise ValueError("config.tie_word_embeddings is True but lm_head.weight differs from "
                             "model.embed_tokens.weight; LlavaNext would tie them and change the logits")
    missing = sorted(set(targets) - set(out))
    if hf_config.tie_word_embeddings and missing == ["lm_head.weight"]:
        missing = []  # tied: LlavaNext fills lm_head from embed_tokens
    if unused or missing:
        raise ValueError(f"state dict mapping is incomplete: unused source keys {sorted(unused)}, "
                         f"unfilled LlavaNext keys {missing}")
    return out


def llava_to_hf(model, image_token_id: int | None = None):
    """Our model as a `LlavaNextForConditionalGeneration` in fp32 on CPU.

    `image_token_id` defaults to a new id right after our vocabulary (the
    converter adds `<image>` there); the embeddings grow by mean rows to hold it.
    """
    from transformers import LlavaNextForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = model.config
    vocab = config.vocab_size
    if image_token_id is None:
        image_token_id = vocab
    vocab_size = max(vocab, image_token_id + 1)
    hf_config = hf_config_from_llava(config, image_token_id, vocab_size=vocab_size)
    source = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    weights = hf_state_dict_from_llava(source, config, vocab_size=vocab_size, hf_config=hf_config)
    with no_init_weights():  # every parameter is overwritten just below
        hf_model = LlavaNextForConditionalGeneration(hf_config)
    hf_model.to(torch.float32)
    result = hf_model.load_state_dict(weights, strict=not hf_config.tie_word_embeddings)
    if hf_config.tie_word_embeddings and (result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}):
        raise ValueError(f"LlavaNext rejected keys: {result}")
    if hf_config.tie_word_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()
