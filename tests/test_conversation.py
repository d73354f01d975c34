"""LLaVA's conversation objects: API, rendered prompts, and segments that join into the prompt."""

import pytest

from llava.conversation import conv_templates, get_conversation_template

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _chat(version, system=None):
    conv = conv_templates[version].copy()
    if system is not None:
        conv.system = system
    conv.append_message(conv.roles[0], "<image>\nWhat?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "Sure?")
    conv.append_message(conv.roles[1], None)
    return conv


def test_copy_is_independent_and_templates_untouched():
    conv = conv_templates["v1"].copy()
    conv.append_message(conv.roles[0], "hi")
    assert conv_templates["v1"].messages == []
    assert conv.roles == ("USER", "ASSISTANT") and conv.sep == " " and conv.sep2 == "</s>"
    assert conv_templates["vicuna_v1"] is conv_templates["v1"]
    assert conv_templates["qwen_1_5"] is conv_templates["qwen_2"]


def test_v1_prompt_is_llavas():
    conv = _chat("v1")
    assert conv.system == VICUNA
    assert conv.get_prompt() == VICUNA + " USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:"


@pytest.mark.parametrize(
    "version, expected",
    [
        (
            "llava_llama_3",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nSure?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "qwen_2",
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<image>\nWhat?<|im_end|>\n"
            "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n",
        ),
        ("mistral_instruct", "[INST] <<SYS>>\nS\n<</SYS>>\n\n<image>\nWhat? [/INST] A cat. </s>[INST] Sure? [/INST]"),
        ("plain", "<image>A cat.\n"),
    ],
)
def test_prompts(version, expected):
    assert _chat(version, system="S").get_prompt() == expected


def test_default_system_prompts():
    assert conv_templates["qwen_2"].system == "You are a helpful assistant."
    assert conv_templates["chatml_direct"].system == "Answer the questions."
    assert conv_templates["mistral_instruct"].system == ""
    assert conv_templates["llava_llama_3"].system.startswith("You are a helpful language and vision assistant.")


@pytest.mark.parametrize("version", sorted(conv_templates))
def test_segments_join_to_prompt_and_mark_only_replies(version):
    conv = _chat(version)
    conv.messages[-1][1] = "Yes!"
    segments = conv.render_segments()
    assert "".join(text for text, _ in segments) == conv.get_prompt()
    supervised = [text for text, sup in segments if sup]
    eot = conv.end_of_turn
    expected = [conv.reply_prefix + "A cat." + eot, conv.reply_prefix + "Yes!" + eot]
    if version in ("plain", "v0_plain"):  # the text-only human turn renders as nothing: replies touch
        expected = ["".join(expected)]
    assert supervised == expected
    # neighbours always differ in flag: the prompt before a reply is one piece
    assert all(a[1] != b[1] for a, b in zip(segments, segments[1:]))


def test_unknown_version_and_role_errors():
    with pytest.raises(ValueError, match="unknown conversation version 'v9'"):
        get_conversation_template("v9")
    conv = get_conversation_template("v1")
    conv.append_message("BOT", "x")
    with pytest.raises(ValueError, match="role 'BOT'"):
        conv.get_prompt()
