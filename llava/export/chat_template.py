"""Jinja chat templates for converted models, generated from the conversation style's record.

A model finetuned with `--version v1` only answers well to prompts laid out as
`conv_templates["v1"]` lays them out. transformers users build prompts with
`processor.apply_chat_template(messages)`, so the converted processor carries a
template that produces the same string, character for character, from
transformers' message format (`{"role", "content": str | [{"type": "image"},
{"type": "text", "text": ...}]}`).

The template is written from the same `TurnFormat` record that
`Conversation.get_prompt()` renders with (`llava.conversation.FORMATS`): each
format string becomes a Jinja expression, its {text} the message content and
{system} the system text, so the two cannot drift. In a user turn every image
comes first, as `<image>\\n`, whatever the order of the content items: LLaVA
trains on that layout, and llava-hf's templates do the same. The converter
checks the equality on real conversations before it saves
(`llava.export.check.check_chat_template`).
"""

from __future__ import annotations

import json
import string

from llava.conversation import Conversation, get_conversation_template

# A message's content: a plain string, or a list of items with every image first.
_CONTENT_MACRO = (
    "{%- macro content(c) -%}"
    "{%- if c is string -%}{{ c }}"
    "{%- else -%}"
    "{%- for item in c -%}{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}{%- endif -%}{%- endfor -%}"
    "{%- for item in c -%}{%- if item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)


def _lit(text: str) -> str:
    """A Jinja string literal for `text` (JSON escaping is valid Jinja)."""
    return json.dumps(text)


def _value(fmt: str, conv: Conversation, **variables: str) -> str:
    """A Jinja expression for `fmt`: constants ({sep}, {sep2}) as literals, the rest as the given expressions."""
    constants = {"sep": conv.sep, "sep2": conv.sep2 or ""}
    parts = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        if literal:
            parts.append(_lit(literal))
        if field is None:
            continue
        if field in constants:
            parts.append(_lit(constants[field]))
        elif field in variables:
            parts.append(f"({variables[field]})")
        else:
            raise KeyError(f"format field {{{field}}} has no Jinja value")
    return " ~ ".join(parts) if parts else '""'


def _expr(fmt: str, conv: Conversation, **variables: str) -> str:
    """`{{ ... }}` printing `fmt` (nothing for an empty format)."""
    return "{{ " + _value(fmt, conv, **variables) + " }}" if fmt else ""


def chat_template_for(conv_mode: str) -> str:
    """The Jinja template equal to `conv_templates[conv_mode].get_prompt()` for user/assistant/system messages."""
    conv = get_conversation_template(conv_mode)
    fmt = conv.format
    if fmt.train_images_only:
        raise ValueError(f"conv_mode {conv_mode!r} is the pretraining layout; convert a finetuned model instead")
    user, bot = conv.roles
    text = "content(m['content'])" + (" | trim" if fmt.strip else "")
    system = "system | trim" if fmt.strip else "system"
    header = _expr(fmt.header, conv, role=_lit(bot))
    reply = _expr(fmt.reply, conv, text=text) + _expr(fmt.after_reply, conv)
    user_turn = _expr(fmt.user, conv, role=_lit(user), text=text)
    user_first = _expr(fmt.user_first or fmt.user, conv, role=_lit(user), text=text, sys="sys")
    # Llama-3's template (Meta's, and so LLaVA-NeXT's get_prompt) ends with the assistant header unconditionally.
    trailing = "true" if fmt.always_generation_prompt else "add_generation_prompt"
    return (
        _CONTENT_MACRO
        + f"{{%- set system = {_lit(conv.system)} -%}}{{%- set turns = messages -%}}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = content(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
        "{%- endif -%}"
        f"{{%- set system = ({_lit(conv.system_prefix)} ~ system) if system else '' -%}}"
        f"{{%- if system -%}}{{%- set sys = {_value(fmt.system, conv, system=system)} -%}}"
        f"{{%- else -%}}{{%- set sys = {_value(fmt.system_empty, conv)} -%}}{{%- endif -%}}"
        + _expr(fmt.start, conv, sys="sys", system="system")
        + "{%- for m in turns -%}"
        f"{{%- if m['role'] == 'user' -%}}{{%- if loop.first -%}}{user_first}{{%- else -%}}{user_turn}{{%- endif -%}}"
        f"{{%- elif m['role'] == 'assistant' -%}}{header}{reply}"
        "{%- endif -%}{%- endfor -%}"
        f"{{%- if {trailing} -%}}{header}{{%- endif -%}}"
    )


def guess_conv_mode(tokenizer) -> str:
    """The template a checkpoint was most likely finetuned with, from its tokenizer's special tokens."""
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return "llava_llama_3"
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return "qwen_2"
    return "v1"
