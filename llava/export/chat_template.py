"""Jinja chat templates for converted models that render exactly our conversation templates.

A model finetuned with `--version v1` only answers well to prompts laid out as
`conv_templates["v1"]` lays them out. transformers users build prompts with
`processor.apply_chat_template(messages)`, so the converted processor carries a
template that produces the same string, character for character, from
transformers' message format (`{"role", "content": str | [{"type": "image"},
{"type": "text", "text": ...}]}`). Images render as LLaVA writes them:
`<image>\\n` before the text. The converter checks the equality on real
conversations before it saves (`llava.export.check.check_chat_template`).
"""

from __future__ import annotations

import json

from llava.conversation import LLAMA3_BOS, SeparatorStyle, get_conversation_template

# Render a message's content: a plain string, or a list of image/text items in order.
_CONTENT_MACRO = (
    "{%- macro content(c) -%}"
    "{%- if c is string -%}{{ c }}"
    "{%- else -%}{%- for item in c -%}"
    "{%- if item['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)


def _lit(text: str) -> str:
    """A Jinja string literal for `text` (JSON escaping is valid Jinja)."""
    return json.dumps(text)


def _system_block(default: str) -> str:
    """Set `system` (the first message if it is a system one, else the template's) and `turns`."""
    return (
        f"{{%- set system = {_lit(default)} -%}}"
        "{%- set turns = messages -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = content(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
        "{%- endif -%}"
    )


def chat_template_for(conv_mode: str) -> str:
    """The Jinja template equal to `conv_templates[conv_mode]` for user/assistant/system messages."""
    conv = get_conversation_template(conv_mode)
    style = conv.sep_style
    user, bot = conv.roles
    if style == SeparatorStyle.TWO:  # SYSTEM USER: q ASSISTANT: a</s>USER: ...
        body = (
            f"{{{{ system ~ {_lit(conv.sep)} }}}}"
            "{%- for m in turns -%}"
            f"{{%- if m['role'] == 'user' -%}}{{{{ {_lit(user + ': ')} ~ content(m['content']) ~ {_lit(conv.sep)} }}}}"
            f"{{%- elif m['role'] == 'assistant' -%}}{{{{ {_lit(bot + ': ')} ~ content(m['content']) ~ {_lit(conv.sep2)} }}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {_lit(bot + ':')} }}}}{{%- endif -%}}"
        )
    elif style == SeparatorStyle.LLAMA_3:
        header = "<|start_header_id|>{}<|end_header_id|>\n\n"
        body = (
            f"{{{{ {_lit(LLAMA3_BOS)} }}}}"
            f"{{%- if system -%}}{{{{ {_lit(header.format('system'))} ~ system ~ '<|eot_id|>' }}}}{{%- endif -%}}"
            "{%- for m in turns -%}"
            "{{ '<|start_header_id|>' ~ m['role'] ~ '<|end_header_id|>\\n\\n' ~ content(m['content']) ~ '<|eot_id|>' }}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {_lit(header.format('assistant'))} }}}}{{%- endif -%}}"
        )
    elif style == SeparatorStyle.CHATML:
        user_tag, bot_tag = user.removeprefix("<|im_start|>"), bot.removeprefix("<|im_start|>")
        body = (
            "{%- if system -%}{{ '<|im_start|>system\\n' ~ system ~ '<|im_end|>\\n' }}{%- endif -%}"
            "{%- for m in turns -%}"
            f"{{%- if m['role'] == 'user' -%}}{{{{ '<|im_start|>' ~ {_lit(user_tag)} ~ '\\n' ~ content(m['content']) ~ '<|im_end|>\\n' }}}}"
            f"{{%- elif m['role'] == 'assistant' -%}}{{{{ '<|im_start|>' ~ {_lit(bot_tag)} ~ '\\n' ~ content(m['content']) ~ '<|im_end|>\\n' }}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ '<|im_start|>' ~ {_lit(bot_tag)} ~ '\\n' }}}}{{%- endif -%}}"
        )
    else:
        raise ValueError(
            f"no chat template for conv_mode {conv_mode!r} (style {style.name}); "
            "converted chat templates exist for v1/vicuna_v1/llava_v1, llava_llama_3, qwen_2/qwen_1_5/chatml_direct"
        )
    return _CONTENT_MACRO + _system_block(conv.system) + body


def guess_conv_mode(tokenizer) -> str:
    """The template a checkpoint was most likely finetuned with, from its tokenizer's special tokens."""
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return "llava_llama_3"
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return "qwen_2"
    return "v1"
