"""LLaVA's two mixins: the multimodal modules and the image splice entry point.

`LlavaMetaModel` is mixed into the inner LLM (`LlamaModel`, `Qwen2Model`) so
the vision modules sit under `model.*` in the state dict, as in LLaVA.
`LlavaMetaForCausalLM` is mixed into the `*ForCausalLM` class and turns
`input_ids` + images into `inputs_embeds`; the work is in `splice.py`.
"""

from __future__ import annotations

from abc import ABC

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.anyres import ImageLayout, normalize_aspect_ratio, parse_grid_pinpoints
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.attention import needs_varlen_kwargs
from llava.model.projector import build_vision_projector
from llava.model.splice import pack_image_features, splice_batch, splice_packed, split_images
from llava.model.vision_lora import add_vision_lora
from llava.model.vision_tower import build_vision_tower
from llava.model.weights import load_partial_state, param_roles


def _new_image_newline(hidden: int, like: torch.Tensor | None = None) -> nn.Parameter:
    """LLaVA's init: N(0, 1/hidden), so the newline starts at the scale of token embeddings."""
    kwargs = {} if like is None else {"dtype": like.dtype, "device": like.device}
    return nn.Parameter(torch.randn(hidden, **kwargs) * hidden**-0.5)


def _is_decoding(cache) -> bool:
    return cache is not None and cache.get_seq_length() > 0


def _check_no_markers(input_ids) -> None:
    """A batch without images must not hold image markers."""
    if input_ids is not None and (input_ids == IMAGE_TOKEN_INDEX).any():
        n_markers = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        raise ValueError(f"the batch has {n_markers} image markers (IMAGE_TOKEN_INDEX) but 0 images were given")


def is_packed(position_ids, attention_mask) -> bool:
    """A padding-free batch (`DataCollatorForPackedSequences`): one row, no attention mask, position_ids given.

    transformers reads the sample boundaries from the position_ids, which restart
    at 0 per sample: a block-diagonal causal mask for sdpa / eager / flex, varlen
    for flash-attention.
    """
    return attention_mask is None and position_ids is not None and position_ids.ndim == 2 and position_ids.shape[0] == 1


def flash_varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """flash-attention's varlen arguments for packed position_ids [1, T], computed once per forward."""
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
    return dict(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=max_q, max_length_k=max_k)


def _check_modalities(modalities) -> None:
    """LLaVA-NeXT's `modalities=["image", ...]` argument: images are the only modality here."""
    if modalities is not None and any(m != "image" for m in modalities):
        raise NotImplementedError(f"modalities {sorted(set(modalities))}: only 'image' is supported")


class LlavaMetaModel:
    """Holds `vision_tower`, `mm_projector` and (for *unpad merges) `image_newline`."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None) is not None:
            # A checkpoint: rebuild from the stored vision config; weights come from the checkpoint.
            self.vision_tower = build_vision_tower(config)
            if getattr(config, "mm_vision_lora", None):  # absent in checkpoints without tower LoRA
                add_vision_lora(self.vision_tower, **config.mm_vision_lora)
            self.mm_projector = build_vision_projector(config)
            if "unpad" in (getattr(config, "mm_patch_merge_type", "") or ""):
                self.image_newline = _new_image_newline(config.hidden_size)

    @torch.no_grad()
    def _init_weights(self, module):
        """Also initialise `image_newline`, which transformers' own init does not know.

        transformers 5 runs each sub-model's own `_init_weights`, so this lives
        on the inner model that owns the parameter. `transformers.initialization`
        skips tensors already loaded from a checkpoint, so a saved newline is
        never overwritten; a fresh one (a llava config over a plain LLM folder)
        gets N(0, 1/hidden) instead of uninitialised memory.
        """
        super()._init_weights(module)
        if module is self and getattr(self, "image_newline", None) is not None:
            init.normal_(self.image_newline, mean=0.0, std=self.config.hidden_size**-0.5)

    def get_vision_tower(self):
        tower = getattr(self, "vision_tower", None)
        return tower[0] if isinstance(tower, list) else tower

    def initialize_vision_modules(self, model_args, fsdp=None):
        """Load the tower from `model_args.vision_tower`, build projector and newline, record the config.

        New modules take the LLM's dtype and device. `fsdp` is accepted for
        LLaVA's signature; wrapping is left to the FSDP policy.
        """
        config = self.config
        like = self.get_input_embeddings().weight
        select_layer = getattr(model_args, "mm_vision_select_layer", -2)
        select_feature = getattr(model_args, "mm_vision_select_feature", "patch") or "patch"
        merge_type = getattr(model_args, "mm_patch_merge_type", "spatial_unpad") or "spatial_unpad"

        tower = self.get_vision_tower()
        if tower is None:
            tower = build_vision_tower(model_args.vision_tower, select_layer, select_feature)
            self.vision_tower = tower
        else:
            tower.load_model()
            if tower.image_processor is None:  # rebuilt from a checkpoint's stored config: no processor kept
                tower.set_image_processor(model_args.vision_tower)
        tower.to(dtype=like.dtype, device=like.device)

        config.mm_vision_tower = str(model_args.vision_tower)
        config.mm_vision_config = dict(tower.vision_config)
        config.use_mm_proj = True
        config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear") or "linear"
        config.mm_hidden_size = tower.hidden_size
        config.mm_vision_select_layer = select_layer
        config.mm_vision_select_feature = select_feature
        config.mm_patch_merge_type = merge_type
        config.mm_use_im_start_end = bool(getattr(model_args, "mm_use_im_start_end", False))
        config.mm_use_im_patch_token = bool(getattr(model_args, "mm_use_im_patch_token", False))
        aspect = getattr(model_args, "image_aspect_ratio", None) or getattr(config, "image_aspect_ratio", "anyres")
        config.image_aspect_ratio = normalize_aspect_ratio(aspect)
        pinpoints = getattr(model_args, "image_grid_pinpoints", None) or getattr(config, "image_grid_pinpoints", None)
        config.image_grid_pinpoints = parse_grid_pinpoints(pinpoints, tower.image_size)
        ImageLayout.from_config(config)  # fail now on an inconsistent combination

        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(config).to(dtype=like.dtype, device=like.device)
        else:
            self.mm_projector.requires_grad_(True)  # LLaVA: re-enable a projector frozen by LoRA/peft
        if "unpad" in merge_type and getattr(self, "image_newline", None) is None:
            self.image_newline = _new_image_newline(config.hidden_size, like)

        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            self.load_mm_adapter(adapter)

    def load_mm_adapter(self, path):
        """Load `mm_projector.bin` (keys `model.mm_projector.*`, `model.image_newline`), strictly.

        Every projector tensor, and `image_newline` when the merge type uses
        one, must be in the file with its exact shape; nothing else may be.
        """
        weights = torch.load(path, map_location="cpu", weights_only=True)
        own = [name for name, _ in param_roles(self)["projector"]]
        load_partial_state(self, weights, f"--pretrain_mm_mlp_adapter {path}", required=own, prefix="model.",
                           exact=True)


class LlavaMetaForCausalLM(ABC):
    """Image-aware input preparation, forward and generate shared by every `Llava*ForCausalLM`.

    A wrapper is `class LlavaXForCausalLM(LlavaMetaForCausalLM, XForCausalLM)`
    with `config_class` and `inner_model_class` (its `LlavaMetaModel` subclass).
    """

    inner_model_class: type | None = None
    """The wrapper's inner LLM class with the `LlavaMetaModel` mixin (e.g. `LlavaLlamaModel`)."""

    fused_linear_loss = None
    """Set by `llava.model.fused_loss.enable_liger_kernel`: (hidden [N, H], lm_head weight, targets [N],
    num_items_in_batch) -> loss; None computes logits and transformers' loss."""

    def __init__(self, config):
        # Skip the LLM's own *ForCausalLM.__init__ so the inner model is built once, as the LLaVA subclass.
        PreTrainedModel.__init__(self, config)
        self.model = self.inner_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        """The inner LLM with the `LlavaMetaModel` mixin."""
        return self.model

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def get_image_layout(self) -> ImageLayout:
        return ImageLayout.from_config(self.config)

    def encode_images(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles [N, 3, s, s] -> projected features [N, tokens_per_tile, hidden].

        Tiles arrive in whatever dtype the processor made (fp32); each module
        gets its own dtype so a bf16 tower with an fp32 projector also works.
        """
        tower, projector = self.get_vision_tower(), self.get_model().mm_projector
        features = tower(tiles.to(device=tower.device, dtype=tower.dtype))
        weight = next(projector.parameters(), None)
        return projector(features if weight is None else features.to(weight.dtype))

    def embed_images(self, images, image_sizes) -> list[torch.Tensor]:
        """images (LLaVA's forms) + PIL (width, height) sizes -> one [layout.num_tokens, hidden] per image.

        The sizes are flipped to (height, width) here, once. One tower call
        covers every tile of every image; features are split back per image.
        """
        layout = self.get_image_layout()
        tiles = split_images(images)
        sizes_hw = None
        if image_sizes is not None:
            sizes_hw = [None if s is None else (int(s[1]), int(s[0])) for s in image_sizes]
        if layout.is_anyres and (sizes_hw is None or len(sizes_hw) != len(tiles)):
            got = None if sizes_hw is None else len(sizes_hw)
            raise ValueError(f"anyres needs one image_size per image: {len(tiles)} images, {got} image_sizes")
        features = self.encode_images(torch.cat(tiles, dim=0))  # (all tiles, tokens_per_tile, H)
        per_image = features.split([t.shape[0] for t in tiles], dim=0)
        newline = getattr(self.get_model(), "image_newline", None)
        return [pack_image_features(f, sizes_hw[i] if sizes_hw else None, layout, newline)
                for i, f in enumerate(per_image)]

    def initialize_vision_tokenizer(self, model_args, tokenizer):
        """LLaVA's hook for `<im_start>`/`<im_patch>` tokens; those flags stay False here."""
        for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
            if getattr(model_args, flag, False):
                raise NotImplementedError(f"{flag}=True is not supported; LLaVA-NeXT trains with it False")

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None,
        padding_side=None,
    ):
        """LLaVA's entry: returns (None, position_ids, attention_mask, past_key_values, inputs_embeds, labels).

        Steps: pass through when there is nothing to splice; embed the images;
        embed the text; splice, per sample for a packed batch (`is_packed`: no
        attention mask, position_ids restarting at 0 per sample; the result has
        no attention mask either) or per row with re-padding otherwise.
        """
        n_images = 0 if images is None else len(images)
        decoding = _is_decoding(past_key_values)
        if self.get_vision_tower() is None or n_images == 0 or decoding:
            if not decoding:
                _check_no_markers(input_ids)
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        image_tokens = self.embed_images(images, image_sizes)
        text_embeds = self.get_model().get_input_embeddings()(input_ids.clamp(min=0))  # markers: overwritten
        max_length = getattr(self.config, "tokenizer_model_max_length", None)
        if is_packed(position_ids, attention_mask):
            inputs_embeds, new_positions, new_labels, _ = splice_packed(
                input_ids, position_ids, text_embeds, image_tokens, labels, max_length
            )
            return None, new_positions, None, past_key_values, inputs_embeds, new_labels
        side = padding_side or getattr(self.config, "tokenizer_padding_side", "right") or "right"
        inputs_embeds, new_mask, new_positions, new_labels = splice_batch(
            input_ids, text_embeds, image_tokens, attention_mask, labels, side, max_length
        )
        if attention_mask is not None:
            new_mask = new_mask.to(attention_mask.dtype)
        return None, new_positions, new_mask, past_key_values, inputs_embeds, new_labels

    # forward / generate live here so every wrapper shares them: the mixin comes
    # first in each wrapper's bases, and `super()` reaches the LLM's own methods.
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, images=None, image_sizes=None, return_dict=None, **kwargs):
        """The LLM's forward after the splice; `kwargs` (num_items_in_batch, logits_to_keep, ...) pass through.

        A packed batch runs without a cache (a cache turns off transformers'
        packed-sequence mask) and, under flash-attention or `PACKED_SDPA`, with
        the varlen `cu_seq_lens_*` computed once here instead of in every layer.
        """
        past_key_values = kwargs.pop("cache", past_key_values)  # transformers 5's name for it
        _check_modalities(kwargs.pop("modalities", None))
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes
                )
            )
        if is_packed(position_ids, attention_mask) and not _is_decoding(past_key_values):
            use_cache = False
            if needs_varlen_kwargs(self.config._attn_implementation):
                kwargs.update(flash_varlen_kwargs(position_ids))
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        if self.fused_linear_loss is not None and labels is not None:
            return self._forward_fused_loss(inputs, labels, **kwargs)
        return super().forward(labels=labels, **inputs, **kwargs)

    def _forward_fused_loss(self, inputs: dict, labels, num_items_in_batch=None, **kwargs):
        """Loss straight from the last hidden states and the lm_head weight: no [tokens, vocab] logits.

        Same shift as transformers' causal-LM loss: position t predicts labels[t + 1];
        a sum over tokens divided by `num_items_in_batch` when given, else the token mean.
        """
        kwargs.pop("logits_to_keep", None)
        kwargs.pop("return_dict", None)
        outputs = self.get_model()(**inputs, **kwargs)
        hidden = outputs.last_hidden_state  # [B, T, H]
        targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # [B, T], shifted left
        loss = self.fused_linear_loss(hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight,
                                      targets.reshape(-1).to(hidden.device), num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=None, cache=outputs.cache)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        """LLaVA's generate: splice images into embeddings, then decode; returns only the new tokens.

        The batch is re-padded on the left whatever the training padding side,
        since decoding appends after each row's last token.
        """
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("pass input_ids (`inputs`), not inputs_embeds, to generate")
        _check_modalities(kwargs.pop("modalities", None))
        inputs = kwargs.pop("input_ids", inputs)
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None and len(images) > 0:
            (_, position_ids, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes, padding_side="left"
            )
        else:
            self.prepare_inputs_labels_for_multimodal(inputs, None, attention_mask, None, None, None)  # marker check
            inputs_embeds = self.get_model().get_input_embeddings()(inputs)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        """Keep `images` / `image_sizes` in the step inputs for callers that pass them through generate."""
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs
        )
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs

    def save_pretrained(self, *args, **kwargs):
        """Save with LLaVA's on-disk keys (`...vision_tower.vision_model.*`).

        transformers 5 keeps CLIP/SigLIP weights without the `vision_model.`
        level in memory and re-adds it on save only from the key mapping it
        recorded at `from_pretrained`; the tower is usually attached later
        (`initialize_vision_modules`), so record the mapping of the modules as
        they are now.
        """
        from transformers.conversion_mapping import get_model_conversion_mapping

        self._weight_conversions = get_model_conversion_mapping(self, add_legacy=False)
        return super().save_pretrained(*args, **kwargs)
