"""Build the tokenizer and model for training, and decide what trains in each stage.

Kept apart from `train.py` so that tests can build exactly what the CLI
builds, and check which parameters train, without running a whole training.
"""

from __future__ import annotations

import logging

import torch

from llava.anyres import ImageLayout
from llava.model import reference
from llava.model.weights import param_roles, unwrap_peft
from llava.model.vision_lora import MODULE_NAME as VISION_LORA
from llava.model.vision_lora import add_vision_lora, has_vision_lora

logger = logging.getLogger(__name__)

# Pad candidates for tokenizers without pad and unk (Llama 3 has neither): reserved ids that never occur in text.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|reserved_special_token_2|>", "<|endoftext|>")
# Tokens that end a turn in some template; a pad equal to one would be masked out of the labels' attention.
TURN_END_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>")


def compute_dtype(training_args) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def load_dtype(training_args) -> torch.dtype:
    """Weights dtype at load: 16-bit under DeepSpeed (it keeps fp32 master weights itself), else fp32 + autocast.

    LLaVA loaded bf16 weights also without DeepSpeed, so AdamW updated bf16
    weights directly and lost small updates; mixed precision avoids that.
    """
    quantized = training_args.bits in (4, 8)
    return compute_dtype(training_args) if training_args.deepspeed or quantized else torch.float32


def choose_pad_token(tokenizer) -> str | None:
    """Set a pad token LLaVA's way (unk for Llama-2/Vicuna), never one that ends a turn.

    Returns the token that must be added to the vocabulary (and embeddings
    resized) when nothing suitable exists, else None.
    """
    enders = {t for t in (tokenizer.eos_token, *TURN_END_TOKENS) if t}
    if tokenizer.pad_token is not None and tokenizer.pad_token not in enders:
        return None
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
        return None
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and candidate not in enders:
            tokenizer.pad_token = candidate
            return None
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return "<pad>"


def load_tokenizer(model_args, training_args):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = training_args.model_max_length
    return tokenizer


def _model_class(model_name_or_path):
    from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    kind = reference.model_type(model_name_or_path)  # also a reference checkpoint's "llava" type
    return LlavaQwenForCausalLM if kind == "llava_qwen" else LlavaLlamaForCausalLM


def _share_process_group_with_deepspeed(training_args) -> None:
    """Hand the process group to deepspeed.comm before ZeRO-3 partitions weights at load time.

    With `--use_cpu True` transformers sets up a plain gloo group and leaves
    DeepSpeed's own communication layer uninitialised until the trainer
    starts; `zero.Init` inside `from_pretrained` would then see a world of 1
    and reject the batch sizes. On GPU accelerate has done this already (a no-op then).
    """
    import torch.distributed as dist

    if training_args.deepspeed and dist.is_available() and dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed()


def load_model(model_args, training_args):
    """The LLaVA model class for the folder's LLM family, loaded (maybe quantized) with its weights."""
    from llava.model.attention import resolve_attn_implementation
    from llava.train.lora import quantization_kwargs

    _share_process_group_with_deepspeed(training_args)
    cls = _model_class(model_args.model_name_or_path)
    model = reference.from_pretrained(  # our folders and the reference code's (see llava.model.reference)
        cls,
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        attn_implementation=resolve_attn_implementation(training_args.attn_implementation),
        dtype=load_dtype(training_args),
        **quantization_kwargs(training_args, compute_dtype(training_args)),
    )
    model.config.use_cache = False
    return model


def init_vision(model, model_args, layout: ImageLayout, training_args):
    """LLaVA's `initialize_vision_modules` + the config fields train.py records; returns the tower.

    `layout` (`layout_from_args`) is the one derivation of the image settings:
    its aspect ratio and pinpoints go into the model config before LLaVA's
    initialiser records the rest from `model_args`, and the model's layout
    must then equal it (the dataset measures with the same object).
    """
    config = model.config
    config.image_aspect_ratio = layout.aspect_ratio
    config.image_grid_pinpoints = [list(p) for p in layout.grid_pinpoints]
    model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    if model.get_image_layout() != layout:
        raise ValueError(f"the model's image layout {model.get_image_layout()} differs from the one the "
                         f"arguments give {layout}")
    tower = model.get_vision_tower()
    tower.to(dtype=load_dtype(training_args), device=training_args.device)
    config.tokenizer_padding_side = "right"
    config.tokenizer_model_max_length = training_args.model_max_length
    config.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    config.unfreeze_mm_vision_tower = training_args.unfreeze_mm_vision_tower
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    init_vision_lora(tower, config, model_args, training_args)
    return tower


def init_vision_lora(tower, config, model_args, training_args) -> None:
    """--mm_vision_lora_enable: LoRA branches on the tower's linears, recorded in the config for reloading."""
    config.mm_vision_lora = None
    if not training_args.mm_vision_lora_enable:
        return
    if model_args.tune_mm_mlp_adapter:
        raise ValueError("--mm_vision_lora_enable is a finetune setting; the pretrain stage "
                         "(--tune_mm_mlp_adapter True) trains and saves only the projector")
    if training_args.unfreeze_mm_vision_tower:
        raise ValueError("--mm_vision_lora_enable trains the tower through LoRA only; "
                         "drop --unfreeze_mm_vision_tower (or the LoRA) to train it fully")
    config.mm_vision_lora = {"r": training_args.mm_vision_lora_r, "alpha": training_args.mm_vision_lora_alpha,
                             "dropout": training_args.mm_vision_lora_dropout}
    add_vision_lora(tower, **config.mm_vision_lora)


def set_trainable(model, model_args, training_args) -> None:
    """requires_grad per stage, by module identity.

    - pretrain (`tune_mm_mlp_adapter`): projector + image_newline only;
    - finetune: LLM (its LoRA adapters with --lora_enable; decoder frozen with
      --freeze_backbone), projector + image_newline unless
      --freeze_mm_mlp_adapter, vision tower with --unfreeze_mm_vision_tower.
    """
    base = unwrap_peft(model)
    inner = base.get_model()
    tower = base.get_vision_tower()
    roles = param_roles(model)
    projector = [p for _, p in roles["projector"]]
    mm_ids = {id(p) for p in projector} | {id(p) for _, p in roles["vision_tower"]}
    pretrain = model_args.tune_mm_mlp_adapter
    for name, param in model.named_parameters():
        if id(param) in mm_ids:
            continue
        if pretrain:
            param.requires_grad_(False)
        elif training_args.lora_enable:
            param.requires_grad_("lora_" in name or (training_args.lora_bias != "none" and "bias" in name))
        else:
            param.requires_grad_(True)
    if model_args.freeze_backbone and not pretrain:
        inner.requires_grad_(False)  # the decoder; the multimodal parts are set just below, lm_head stays
    for param in projector:
        param.requires_grad_(pretrain or not training_args.freeze_mm_mlp_adapter)
    if tower is not None:
        tower.requires_grad_(bool(training_args.unfreeze_mm_vision_tower) and not pretrain)
        if has_vision_lora(tower):  # the tower's weights stay frozen, its LoRA branches train
            getattr(tower, VISION_LORA).requires_grad_(not pretrain)


def allow_frozen_quantized_llm(model, model_args, training_args) -> None:
    """--bits 4/8 with --tune_mm_mlp_adapter True: a frozen quantized LLM under a trainable projector.

    transformers' Trainer refuses to train a quantized model unless adapters
    are attached to it ("purely quantized models"), recognising adapters by a
    PEFT wrapper or by `_hf_peft_config_loaded`. In the pretrain stage the
    trainable part on top of the frozen quantized LLM is the projector
    (XTuner's single-GPU pretrain), so the model is marked as carrying one.
    The flag also makes transformers' `save_pretrained` write adapters only;
    the pretrain stage never calls it (it saves `mm_projector.bin`).
    """
    if training_args.bits in (4, 8) and model_args.tune_mm_mlp_adapter and not training_args.lora_enable:
        model._hf_peft_config_loaded = True
