"""Conversation templates: every LLaVA / LLaVA-NeXT name renders exactly as their `get_prompt()`.

The reference is their own `llava/conversation.py`, vendored verbatim under
tests/fixtures/upstream (see SOURCE.md there), loaded as modules and fed the
same messages as ours.
"""

import importlib.util
from pathlib import Path

import huggingface_hub.constants
import pytest

from llava import conversation as ours
from llava.conversation import SeparatorStyle, conv_templates, get_conversation_template

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_upstream():
    """{"llava": LLaVA-1.5's module, "next": LLaVA-NeXT's}.

    LLaVA-NeXT downloads Meta-Llama-3-8B-Instruct's tokenizer at import; offline it stores None (the
    `upstream` fixture then gives it the vendored copy of that tokenizer, same chat template).
    """
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        return {"llava": _load("upstream_llava_conversation", UPSTREAM / "llava" / "conversation.py"),
                "next": _load("upstream_llava_next_conversation", UPSTREAM / "llava_next" / "conversation.py")}
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline


UPSTREAM_MODULES = _load_upstream()


@pytest.fixture(scope="module")
def upstream(tokenizers):
    UPSTREAM_MODULES["next"].conv_llava_llama_3.tokenizer = tokenizers("llama3")
    return UPSTREAM_MODULES


QUESTION = "<image>\nWhat is shown here?"
# (system or None for the template's own, messages); None as the last text is the open slot
CONVERSATIONS = {
    "first_turn": (None, [QUESTION, None]),
    "several_turns": (None, [QUESTION, "A red square.", "Are you sure?", "Yes, it is red.", "And its size?", None]),
    "own_system": ("Be brief.", [QUESTION, "Red.", "Why?", None]),
    "finished": (None, [QUESTION, "A red square.", "Thanks", "You are welcome."]),
    "text_only": ("Answer in one word.", ["Capital of France?", "Paris.", "Of Italy?", None]),
    "image_mid_text": (None, ["Look: <image> what colour?", None]),
}


def _fill(conv, system, texts):
    if system is not None:
        conv.system = system
    for i, text in enumerate(texts):
        conv.append_message(conv.roles[i % 2], text)
    return conv


def _upstream_system(module, name, system):
    """Upstream keeps the ChatML / MPT header inside the system text."""
    if system is None:
        return None
    prefix = get_conversation_template(name).system_prefix
    return prefix + system if prefix else system


def _cases():
    for source, module in UPSTREAM_MODULES.items():
        for name in sorted(module.conv_templates):
            for case in CONVERSATIONS:
                yield pytest.param(source, name, case, id=f"{source}-{name}-{case}")


@pytest.mark.parametrize("source, name, case", list(_cases()))
def test_prompt_equals_upstream(upstream, source, name, case):
    module = upstream[source]
    system, texts = CONVERSATIONS[case]
    theirs = _fill(module.conv_templates[name].copy(), _upstream_system(module, name, system), texts)
    if source == "next" and name == "llava_llama_3":
        theirs.tokenizer = module.conv_llava_llama_3.tokenizer  # their copy() drops it; LLaVA-NeXT users deepcopy
    mine = _fill(get_conversation_template(name), system, texts)
    try:
        expected = theirs.get_prompt()
    except TypeError:  # upstream plain has sep2=None and cannot render a finished reply
        assert name in ("plain", "v0_plain") and any(t is not None for t in texts[1::2])
        pytest.skip("upstream cannot render a finished plain conversation")
    assert mine.get_prompt() == expected


@pytest.mark.parametrize("name", ["v1", "llava_v1", "qwen_2", "llava_v1_mmtag", "llava_llama_2_mmtag", "mpt"])
def test_gradio_tuple_first_message_equals_upstream_next(upstream, name):
    theirs = upstream["next"].conv_templates[name].copy()
    mine = get_conversation_template(name)
    for conv in (theirs, mine):
        conv.append_message(conv.roles[0], ("What is it?\n<image>", "IMAGE", "Default"))
        conv.append_message(conv.roles[1], None)
    assert mine.get_prompt() == theirs.get_prompt()


def test_names_and_public_objects_are_upstreams(upstream):
    names = set(upstream["llava"].conv_templates) | set(upstream["next"].conv_templates)
    assert names <= set(conv_templates)
    assert {m.name for m in upstream["next"].SeparatorStyle} <= {m.name for m in SeparatorStyle}
    assert ours.default_conversation.get_prompt() == upstream["next"].default_conversation.get_prompt()
    v0 = conv_templates["v0"]
    assert v0.offset == 2 and len(v0.messages) == 2


def test_copy_is_independent_and_templates_untouched():
    conv = conv_templates["v1"].copy()
    conv.append_message(conv.roles[0], "hi")
    assert conv_templates["v1"].messages == []
    assert conv.roles == ("USER", "ASSISTANT") and conv.sep == " " and conv.sep2 == "</s>"
    assert conv_templates["vicuna_v1"] is conv_templates["v1"]
    assert conv_templates["qwen_1_5"] is conv_templates["qwen_2"]


def _chat(version, system=None):
    conv = conv_templates[version].copy()
    conv.messages = []  # v0 / default carry an example exchange
    if system is not None:
        conv.system = system
    conv.append_message(conv.roles[0], "<image>\nWhat?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "Sure?")
    conv.append_message(conv.roles[1], None)
    return conv


@pytest.mark.parametrize(
    "version, expected",
    [
        ("v1", "S USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:"),
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
        (
            "chatml_direct",
            "<|im_start|>system\nS<|im_end|><|im_start|>user\n<image>\nWhat?<|im_end|>"
            "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nSure?<|im_end|><|im_start|>assistant\n",
        ),
        ("mistral_instruct", "[INST] <<SYS>>\nS\n<</SYS>>\n\n<image>\nWhat? [/INST] A cat. </s>[INST] Sure? [/INST]"),
        ("llava_v0", "S###Human: <image>\nWhat?###Assistant: A cat.###Human: Sure?###Assistant:"),
    ],
)
def test_prompts_literal(version, expected):
    assert _chat(version, system="S").get_prompt() == expected


def test_system_given_with_its_header_is_not_doubled():
    conv = get_conversation_template("qwen_2")
    conv.system = "<|im_start|>system\nS"  # LLaVA-NeXT's spelling
    assert conv.get_prompt() == "<|im_start|>system\nS<|im_end|>\n"


@pytest.mark.parametrize("version", sorted(conv_templates))
def test_segments_mark_only_replies(version):
    conv = _chat(version)
    conv.messages[-1][1] = "Yes!"
    segments = conv.render_segments()
    supervised = [text for text, sup in segments if sup]
    eot = conv.end_of_turn
    expected = [conv.reply_prefix + "A cat." + eot, conv.reply_prefix + "Yes!" + eot]
    if version in ("plain", "v0_plain"):  # the text-only human turn renders as nothing: replies touch
        expected = ["".join(expected)]
    assert supervised == expected
    assert all(a[1] != b[1] for a, b in zip(segments, segments[1:]))
    training = "".join(text for text, _ in segments)
    if version in ("plain", "v0_plain"):  # LLaVA's preprocess_plain: image markers + captions
        assert training == "<image>A cat.\nYes!\n"
    elif conv.sep_style == SeparatorStyle.LLAMA_3:  # get_prompt() adds LLaVA-NeXT's trailing header
        assert training + "<|start_header_id|>assistant<|end_header_id|>\n\n" == conv.get_prompt()
    else:
        assert training == conv.get_prompt()


def test_unknown_version_and_role_errors():
    with pytest.raises(ValueError, match="unknown conversation version 'v9'"):
        get_conversation_template("v9")
    conv = get_conversation_template("v1")
    conv.append_message("BOT", "x")
    with pytest.raises(ValueError, match="role 'BOT'"):
        conv.get_prompt()


# ----------------------------------------------------------------------------- the Jinja chat template


def _hf_messages(system, texts, image_last=False):
    """transformers' messages for CONVERSATIONS[case]; "<image>\\n" at the start becomes an image item."""
    out = [] if system is None else [{"role": "system", "content": [{"type": "text", "text": system}]}]
    for i, text in enumerate(texts):
        if text is None:
            break
        items = [{"type": "text", "text": text}]
        if text.startswith("<image>\n"):
            items = [{"type": "text", "text": text[len("<image>\n"):]}]
            items.insert(len(items) if image_last else 0, {"type": "image"})
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": items})
    return out


def _render(template, messages, add_generation_prompt=True):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=add_generation_prompt)
    return rendered[0]


CHAT_NAMES = sorted(n for n in conv_templates if conv_templates[n].sep_style != SeparatorStyle.PLAIN)


@pytest.mark.parametrize("name", CHAT_NAMES)
def test_jinja_template_equals_get_prompt_and_puts_images_first(name):
    from llava.export.chat_template import chat_template_for

    template = chat_template_for(name)
    for case, (system, texts) in CONVERSATIONS.items():
        if "<image>" in "".join(t for t in texts if t) and not any(t and t.startswith("<image>\n") for t in texts):
            continue  # an image inside the text has no content-item spelling
        if name in ("v0", "default"):
            continue  # their built-in example exchange is not a message
        expected = _fill(get_conversation_template(name), system, texts).get_prompt()
        open_slot = texts[-1] is None
        for image_last in (False, True):
            got = _render(template, _hf_messages(system, texts, image_last), add_generation_prompt=open_slot)
            assert got == expected, (case, image_last)
