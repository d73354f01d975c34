"""Constants shared with LLaVA's public API (same names and values)."""

IGNORE_INDEX = -100
"""Label value that the loss ignores (PyTorch's cross-entropy default)."""

IMAGE_TOKEN_INDEX = -200
"""Placeholder id for one image inside `input_ids`; the model expands it into the image's features."""

DEFAULT_IMAGE_TOKEN = "<image>"
"""The marker users write in prompts and conversations where an image goes."""

DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15
LOGDIR = "."

DEFAULT_VERSION = "v0"
"""`--version` when none is given (LLaVA's default; shared by train.py's arguments and the preflight check)."""

DEFAULT_MODEL_MAX_LENGTH = 512
"""`--model_max_length` when none is given (shared by train.py's arguments and the preflight check)."""

IMAGE_PLACEHOLDER = "<image-placeholder>"
"""LLaVA's `run_llava.py` spelling for where the image goes in a `--query` (replaced by `<image>`)."""
