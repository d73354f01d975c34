"""flash_attention_2 -> sdpa fallback: picked correctly, warned about once."""

import importlib.util
import logging

import pytest
import torch

from llava.model import attention


@pytest.fixture
def fresh_warner():
    attention._warn_fallback.cache_clear()
    yield
    attention._warn_fallback.cache_clear()


def hide_flash_attn(monkeypatch, present: bool, cuda: bool):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "flash_attn":
            return object() if present else None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


def test_missing_flash_attn_falls_back_to_sdpa_with_one_warning(monkeypatch, caplog, fresh_warner):
    hide_flash_attn(monkeypatch, present=False, cuda=True)
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        picks = [attention.resolve_attn_implementation("flash_attention_2") for _ in range(3)]
        picks.append(attention.resolve_attn_implementation(None))
    assert picks == ["sdpa"] * 4
    warnings = [r for r in caplog.records if "flash_attention_2 is unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "not installed" in warnings[0].getMessage()


def test_flash_attn_picked_when_installed_with_cuda(monkeypatch, fresh_warner):
    hide_flash_attn(monkeypatch, present=True, cuda=True)
    assert attention.resolve_attn_implementation(None) == "flash_attention_2"
    assert attention.resolve_attn_implementation("flash_attention_2") == "flash_attention_2"


def test_explicit_choices_pass_through_and_cpu_none_is_quiet(monkeypatch, caplog, fresh_warner):
    hide_flash_attn(monkeypatch, present=True, cuda=False)
    assert attention.resolve_attn_implementation("eager") == "eager"
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        assert attention.resolve_attn_implementation(None) == "sdpa"
    assert not caplog.records
