"""Shared fixtures: tiny random model folders and the vendored real tokenizers.

Folders are built once per test session (seconds), never downloaded.
"""

import os

import pytest

from llava.demo.tiny import build_tiny_llm, build_tiny_vision_tower, load_vendored_tokenizer

TINY_TILE = 56  # 4x4 patches of 14 px: tiny but still a real grid


@pytest.fixture(scope="session", autouse=True)
def data_cache_dir(tmp_path_factory):
    """The dataset scan cache of this session (also for the training subprocesses): never ~/.cache."""
    folder = tmp_path_factory.mktemp("data_cache")
    previous = os.environ.get("LLAVA_DATA_CACHE_DIR")
    os.environ["LLAVA_DATA_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LLAVA_DATA_CACHE_DIR", None)
    else:
        os.environ["LLAVA_DATA_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def tokenizers():
    """Loaded real tokenizers by name: llama2, mistral, llama3, qwen2 (cached per session)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_vendored_tokenizer(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "llama", family="llama", tokenizer="llama2")


@pytest.fixture(scope="session")
def tiny_llama3_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "llama3", family="llama", tokenizer="llama3")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    return build_tiny_llm(tmp_path_factory.mktemp("tiny") / "qwen2", family="qwen2", tokenizer="qwen2")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_vision_tower(tmp_path_factory.mktemp("tiny") / "clip", family="clip", image_size=TINY_TILE)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    return build_tiny_vision_tower(tmp_path_factory.mktemp("tiny") / "siglip", family="siglip", image_size=TINY_TILE)
