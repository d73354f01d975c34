"""`load_pretrained_model`: LLaVA's loader, for the three kinds of folders training writes.

- a full finetuned checkpoint (`config.json` of a `llava_*` model, all weights);
- a LoRA checkpoint (`adapter_config.json`, adapter weights and
  `non_lora_trainables.bin`) on top of `model_base`;
- a projector-only pretrain checkpoint (`config.json` + `mm_projector.bin`) on
  top of `model_base`, with the vision tower read from `config.mm_vision_tower`.

The signature and return value are LLaVA's, so LLaVA's scripts and lmms-eval
call it unchanged; the model family comes from the config's `model_type`
rather than from the folder name, which LLaVA used.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import reference
from llava.model.weights import NON_LORA_FILE, PROJECTOR_FILE, check_matches_files, load_partial_state, param_roles
from llava.model.vision_lora import merge_model_vision_lora

# Modules that stay unquantised under bitsandbytes (built inside our model, unlike LLaVA's separate tower).
QUANTIZATION_SKIP_MODULES = ["vision_tower", "mm_projector", "lm_head"]


def _as_dtype(torch_dtype) -> torch.dtype:
    """Accept torch.float16 or LLaVA's strings ('float16', 'bf16', 'torch.float32', ...)."""
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    names = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    name = str(torch_dtype).removeprefix("torch.")
    value = getattr(torch, names.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown torch_dtype {torch_dtype!r}; use e.g. 'float16', 'bfloat16', 'float32'")
    return value


def bnb_config(bits: int, compute_dtype: torch.dtype, double_quant: bool = True, quant_type: str = "nf4"):
    """The one `BitsAndBytesConfig` of the package (training's QLoRA and this loader).

    The tower and projector are built inside our model, so they (and lm_head)
    stay unquantised, as LLaVA's separately loaded tower was.
    """
    from transformers import BitsAndBytesConfig

    if bits not in (4, 8):
        raise ValueError(f"bitsandbytes quantises to 4 or 8 bits, got {bits}")
    return BitsAndBytesConfig(
        load_in_4bit=bits == 4, load_in_8bit=bits == 8, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
        bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=double_quant, bnb_4bit_quant_type=quant_type,
    )


def _load_kwargs(load_8bit, load_4bit, device_map, device, dtype, attn_implementation) -> dict:
    """from_pretrained kwargs: dtype, attention, and placement/quantisation only where they apply."""
    from llava.model.attention import resolve_attn_implementation

    on_cuda = str(device).startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available; pass device='cpu', torch_dtype='float32'")
    kwargs = {"dtype": dtype, "attn_implementation": resolve_attn_implementation(attn_implementation)}
    if load_8bit or load_4bit:
        if not on_cuda:
            raise ValueError(f"load_8bit/load_4bit need bitsandbytes on a CUDA device; got device={device!r}")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ImportError("load_8bit/load_4bit need the bitsandbytes package (pip install bitsandbytes)") from err
        kwargs["quantization_config"] = bnb_config(4 if load_4bit else 8, dtype)
    if on_cuda:
        kwargs["device_map"] = device_map if device == "cuda" else {"": device}
    return kwargs


def _llava_config(path, model_name: str, customized_config=None, overwrite_config=None):
    """Our model class and the folder's config (normalised by `llava.model.reference`), with LLaVA-NeXT's overrides.

    `customized_config`: a config object, or a folder / JSON file, used instead
    of the folder's; `overwrite_config`: {attribute: value} set on it.
    """
    from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    source = customized_config if isinstance(customized_config, (str, os.PathLike)) else path
    if Path(source).is_file():  # a JSON config file
        raw = reference.normalized(json.loads(Path(source).read_text()), source)
    else:
        raw = reference.normalized(reference.config_dict(source), source)
    if "qwen" in raw.get("model_type", "") or ("llama" not in raw.get("model_type", "") and "qwen" in model_name.lower()):
        cls = LlavaQwenForCausalLM
    else:
        cls = LlavaLlamaForCausalLM
    if customized_config is not None and not isinstance(customized_config, (str, os.PathLike)):
        config = customized_config
    else:
        raw.pop("model_type", None)
        config = cls.config_class.from_dict(raw)
    for key, value in (overwrite_config or {}).items():
        setattr(config, key, value)
    return cls, config


def _load_into(model, path: Path, what: str):
    """Load a partial state dict (LLaVA or PEFT key layout) that must provide the projector and newline.

    Every tensor in the file must land in the model with its shape, and the
    multimodal weights the base LLM folder lacks must all be in it: otherwise
    they would stay at their random initialisation and the model would quietly be wrong.
    """
    weights = torch.load(path, map_location="cpu", weights_only=True)
    required = [name for name, _ in param_roles(model)["projector"]]
    # mm_projector.bin holds exactly the projector and newline; non_lora_trainables.bin whatever else trained
    load_partial_state(model, weights, f"{what} {path}", required=required, exact=what == PROJECTOR_FILE)


def _check_loading_info(info: dict, folder, may_lack=()) -> None:
    """Refuse what `from_pretrained` would only report: missing (re-initialised), unexpected or mismatched tensors."""
    missing = sorted(set(info.get("missing_keys", ())) - set(may_lack))
    problems = {"missing": missing, "unexpected": sorted(info.get("unexpected_keys", ())),
                "wrong shape": sorted(map(str, info.get("mismatched_keys", ())))}
    found = [f"{kind} {names[:8]}" for kind, names in problems.items() if names]
    if found:
        raise ValueError(f"{folder}: the weights do not match the model: " + "; ".join(found))


def _load_full(model_path: Path, model_name, load_kwargs, customized_config=None, overwrite_config=None):
    """A full checkpoint, strictly: the files' own tensors must be exactly the model's (names and shapes).

    A reference-code checkpoint that saved no tower weights gets them from its
    `mm_vision_tower` folder (`llava.model.reference`); only those may be absent from the files.
    """
    cls, config = _llava_config(model_path, model_name, customized_config, overwrite_config)
    model, info = cls.from_pretrained(model_path, config=config, output_loading_info=True,
                                      ignore_mismatched_sizes=True, **load_kwargs)
    tower_from_folder = bool(getattr(config, "mm_vision_tower", None)) and not reference.checkpoint_has_tower(model_path)
    if tower_from_folder:
        reference.load_tower_from_folder(model, config.mm_vision_tower)
    may_lack = ("model.vision_tower.",) if tower_from_folder else ()
    if "quantization_config" in load_kwargs:  # packed 4/8-bit shapes differ from the files': trust the loader's report
        _check_loading_info(info, model_path, may_lack=may_lack)
    else:
        check_matches_files(model, model_path, may_lack=may_lack)
    return model


def _from_base(model_path: Path, model_base, model_name, load_kwargs):
    """Base LLM weights + our config from `model_path`; the tower from its folder."""
    cls, config = _llava_config(model_path, model_name)
    from transformers import AutoConfig

    base_vocab = AutoConfig.from_pretrained(model_base).vocab_size
    target_vocab, config.vocab_size = config.vocab_size, base_vocab
    model, info = cls.from_pretrained(model_base, config=config, output_loading_info=True, **load_kwargs)
    # A base LLM folder lacks only the multimodal weights: the tower folder and the partial file provide them.
    _check_loading_info(info, model_base, may_lack=[n for named in param_roles(model).values() for n, _ in named])
    if target_vocab != base_vocab:
        model.resize_token_embeddings(target_vocab)
    reference.load_tower_from_folder(model, getattr(config, "mm_vision_tower", None))
    return model


def _load_lora(model_path: Path, model_base, model_name, load_kwargs):
    """LLaVA's LoRA layout: base + non-LoRA trainables (projector, ...) + merged adapter."""
    from peft import PeftModel

    model = _from_base(model_path, model_base, model_name, load_kwargs)
    if (model_path / NON_LORA_FILE).is_file():
        _load_into(model, model_path / NON_LORA_FILE, NON_LORA_FILE)
    model = PeftModel.from_pretrained(model, os.fspath(model_path))
    return model.merge_and_unload()


def _load_projector_only(model_path: Path, model_base, model_name, load_kwargs):
    """Pretrain stage output: base LLM + the vision tower folder + `mm_projector.bin`."""
    if not (model_path / PROJECTOR_FILE).is_file():
        raise FileNotFoundError(
            f"{model_path} has no {PROJECTOR_FILE}; with model_base a projector-only checkpoint is expected"
        )
    model = _from_base(model_path, model_base, model_name, load_kwargs)
    _load_into(model, model_path / PROJECTOR_FILE, PROJECTOR_FILE)
    return model


def _image_processor(tower, model_path: Path, config):
    """The checkpoint's own processor when it saved one, else the tower folder's (None without a tower)."""
    from transformers import AutoImageProcessor

    if tower is None:
        return None
    if (model_path / "preprocessor_config.json").is_file():
        tower.image_processor = AutoImageProcessor.from_pretrained(model_path)
    elif tower.image_processor is None:
        folder = getattr(config, "mm_vision_tower", None)
        if folder and (Path(folder) / "preprocessor_config.json").is_file():
            tower.image_processor = AutoImageProcessor.from_pretrained(folder)
    return tower.image_processor


def _add_llava_tokens(tokenizer, model):
    """LLaVA's optional `<im_patch>` / `<im_start>`/`<im_end>` tokens (off by default)."""
    new = []
    if getattr(model.config, "mm_use_im_patch_token", False):
        new.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if getattr(model.config, "mm_use_im_start_end", False):
        new += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if new and tokenizer.add_tokens(new, special_tokens=True):
        model.resize_token_embeddings(len(tokenizer))


def _resolve_device(device_map, device, dtype):
    """LLaVA's defaults (device "cuda", device_map "auto", fp16) on a machine without CUDA: CPU in fp32, one warning.

    LLaVA's scripts and lmms-eval call with those defaults and have no other
    route to the CPU. An explicit CUDA device (`device="cuda:1"`,
    `device_map="cuda:0"`) still fails clearly.
    """
    if torch.cuda.is_available() or device != "cuda" or device_map not in ("auto", None):
        return device_map, device, dtype
    warnings.warn("CUDA is not available: loading on the CPU in float32 (device_map='auto', device='cuda' ignored)",
                  stacklevel=3)
    return None, "cpu", torch.float32


def _context_len(config) -> int:
    """As LLaVA-NeXT reports it: max_sequence_length, else max_position_embeddings, else the tokenizer's, else 2048."""
    for name in ("max_sequence_length", "max_position_embeddings", "tokenizer_model_max_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return 2048


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          device="cuda", torch_dtype="float16", attn_implementation=None, customized_config=None,
                          overwrite_config=None, multimodal=True, **kwargs):
    """Load a LLaVA checkpoint; returns (tokenizer, model, image_processor, context_len) as LLaVA does.

    `model_base` is the LLM folder a LoRA or projector-only checkpoint was
    trained on (None for a full checkpoint). Without CUDA, LLaVA's defaults
    load on the CPU in fp32 (`_resolve_device`). LLaVA-NeXT's arguments:
    `customized_config` / `overwrite_config` (full checkpoints), and
    `multimodal`, accepted and ignored (the model family comes from the config,
    not the folder name).
    """
    from transformers import AutoTokenizer

    model_path = Path(model_path)
    device_map, device, dtype = _resolve_device(device_map, device, _as_dtype(torch_dtype))
    flash = kwargs.pop("use_flash_attn", False) or kwargs.pop("use_flash_attention_2", False)  # older flags
    if flash and attn_implementation is None:
        attn_implementation = "flash_attention_2"
    load_kwargs = {**kwargs, **_load_kwargs(load_8bit, load_4bit, device_map, device, dtype, attn_implementation)}
    is_lora = (model_path / "adapter_config.json").is_file()
    if is_lora and model_base is None:
        raise ValueError(f"{model_path} is a LoRA checkpoint; pass model_base (the LLM it was trained on)")

    tokenizer = AutoTokenizer.from_pretrained(model_base if model_base is not None else model_path, use_fast=True)
    if is_lora:
        model = _load_lora(model_path, model_base, model_name, load_kwargs)
    elif model_base is not None:
        model = _load_projector_only(model_path, model_base, model_name, load_kwargs)
    else:
        model = _load_full(model_path, model_name, load_kwargs, customized_config, overwrite_config)

    if "device_map" not in load_kwargs:  # the tower is a submodule, so it moves too
        model.to(device=device, dtype=dtype)
    merge_model_vision_lora(model)  # --mm_vision_lora_enable checkpoints: fold the tower's LoRA into its weights
    _add_llava_tokens(tokenizer, model)
    tower = model.get_vision_tower()
    image_processor = _image_processor(tower, model_path, model.config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model.eval()
    return tokenizer, model, image_processor, _context_len(model.config)
