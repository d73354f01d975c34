"""LLaVA's conversation templates, rendered as segments that know which text is trained on.

Users and lmms-eval drive these objects the LLaVA way::

    conv = conv_templates["v1"].copy()
    conv.append_message(conv.roles[0], "<image>\\nWhat is this?")
    conv.append_message(conv.roles[1], None)      # None: the model answers here
    prompt = conv.get_prompt()

Training needs more than the prompt string: it needs to know which tokens are
the assistant's, so the loss mask is right on every tokenizer. Instead of
re-tokenising the rendered string and guessing where replies start (LLaVA's
per-template `-1`/`-2` offsets), `render_segments()` returns the conversation
as ordered `(text, supervised)` pieces; `get_prompt()` is just their
concatenation, so inference and training can never render differently.

Each supervised piece is one assistant reply plus the template's end-of-turn
marker, preceded by the single separating space of the `v1`/`mistral_instruct`
styles: SentencePiece and byte-level BPE both glue that space onto the reply's
first word, so the prompt ends right before it, exactly where generation
starts at inference. Every other boundary sits right after a special token or
before that space, where the tokenizers never merge across.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    """How turns are joined (LLaVA's names for the styles kept here)."""

    TWO = auto()  # vicuna v1: "SYSTEM USER: q ASSISTANT: a</s>"
    LLAMA_2 = auto()  # mistral_instruct: "[INST] q [/INST] a </s>"
    LLAMA_3 = auto()  # Llama-3-Instruct headers, turns end with <|eot_id|>
    CHATML = auto()  # Qwen / Yi: <|im_start|>role\n ... <|im_end|>\n
    PLAIN = auto()  # pretraining: image markers, then the caption and "\n"


LLAMA3_BOS = "<|begin_of_text|>"


@dataclasses.dataclass
class Conversation:
    """One conversation template plus the messages appended so far (LLaVA's object)."""

    system: str
    """System prompt text (bare text: the template adds any header around it)."""
    roles: tuple
    """(user role, assistant role) names as LLaVA spells them; messages carry one of these."""
    messages: list
    """`[role, text]` pairs; text None marks the open slot the model fills at inference."""
    offset: int = 0
    """LLaVA's count of few-shot messages hidden from chat UIs (kept for compatibility)."""
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    """How turns are joined; see `render_segments`."""
    sep: str = " "
    """Separator after a user turn (style TWO, PLAIN) or header/turn end (LLAMA_3, CHATML)."""
    sep2: str | None = None
    """End-of-turn marker after an assistant reply (styles TWO, LLAMA_2, PLAIN)."""
    version: str = "Unknown"
    """LLaVA's version tag of the template (`v1`, `llama_v3`, `qwen`, `plain`, ...)."""
    stop_str: str | None = None
    """Text at which generation should stop (the end-of-turn marker)."""

    # ------------------------------------------------------------------ LLaVA API

    def append_message(self, role, message):
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[[r, m] for r, m in self.messages])

    def get_prompt(self) -> str:
        """The whole conversation as one string, exactly the concatenated segments."""
        return "".join(text for text, _ in self.render_segments())

    def dict(self) -> dict:
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[r, _text(m)] for r, m in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }

    # ------------------------------------------------------------------ rendering

    @property
    def end_of_turn(self) -> str:
        """The marker that closes every assistant reply (trained on, so the model learns to stop)."""
        return {
            SeparatorStyle.TWO: self.sep2,
            SeparatorStyle.LLAMA_2: " " + (self.sep2 or ""),
            SeparatorStyle.LLAMA_3: "<|eot_id|>",
            SeparatorStyle.CHATML: "<|im_end|>",
            SeparatorStyle.PLAIN: self.sep2 or self.sep,
        }[self.sep_style]

    @property
    def reply_prefix(self) -> str:
        """Text between the assistant header and the reply; it belongs to the supervised piece."""
        return " " if self.sep_style in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2) else ""

    def render_segments(self) -> list[tuple[str, bool]]:
        """The conversation as `(text, supervised)` pieces, in order; empty pieces are dropped.

        A message with text None is the open assistant slot: its header is
        rendered (the generation prompt) and nothing after it.
        """
        out: list[tuple[str, bool]] = []
        emit = _Emitter(out)
        style = self.sep_style
        user_role, bot_role = self.roles[0], self.roles[1]
        if style == SeparatorStyle.TWO:
            emit(self.system + self.sep)
        elif style == SeparatorStyle.LLAMA_3:
            emit(LLAMA3_BOS + (_llama3_header("system") + self.system + "<|eot_id|>" if self.system else ""))
        elif style == SeparatorStyle.CHATML and self.system:
            emit(f"<|im_start|>system\n{self.system}<|im_end|>\n")
        first_user = True
        for role, message in self.messages:
            text = _text(message)
            if role == user_role:
                emit(self._user_turn(text, first_user))
                first_user = False
            elif role == bot_role:
                emit(self._assistant_header())
                if text is None:
                    break
                emit(self.reply_prefix + text + self.end_of_turn, supervised=True)
                emit(self._after_reply())
            else:
                raise ValueError(f"role {role!r} is not one of this template's roles {tuple(self.roles)}")
        return out

    def _user_turn(self, text: str, first: bool) -> str:
        style = self.sep_style
        if style == SeparatorStyle.TWO:
            return f"{self.roles[0]}: {text}{self.sep}"
        if style == SeparatorStyle.LLAMA_2:
            system = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n" if first and self.system else ""
            return ("" if first else self.sep) + f"[INST] {system}{text} [/INST]"
        if style == SeparatorStyle.LLAMA_3:
            return _llama3_header("user") + text + "<|eot_id|>"
        if style == SeparatorStyle.CHATML:
            return f"{self.roles[0]}\n{text}<|im_end|>\n"
        # PLAIN: LLaVA pretraining keeps only the image markers of the human turn.
        return "<image>" * text.count("<image>")

    def _assistant_header(self) -> str:
        style = self.sep_style
        if style == SeparatorStyle.TWO:
            return f"{self.roles[1]}:"
        if style == SeparatorStyle.LLAMA_3:
            return _llama3_header("assistant")
        if style == SeparatorStyle.CHATML:
            return f"{self.roles[1]}\n"
        return ""

    def _after_reply(self) -> str:
        return "\n" if self.sep_style == SeparatorStyle.CHATML else ""


class _Emitter:
    """Appends pieces, joining neighbours with the same flag and skipping empty text.

    Joining matters: the prompt before a reply must be tokenised as one string,
    as `tokenizer_image_token(conv.get_prompt())` does at inference.
    """

    def __init__(self, out):
        self.out = out

    def __call__(self, text: str, supervised: bool = False):
        if not text:
            return
        if self.out and self.out[-1][1] == supervised:
            self.out[-1] = (self.out[-1][0] + text, supervised)
        else:
            self.out.append((text, supervised))


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _text(message):
    """LLaVA's gradio code stores `(text, image, mode)` tuples; only the text is rendered."""
    return message[0] if isinstance(message, tuple) else message


LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

conv_vicuna_v1 = Conversation(
    system=VICUNA_SYSTEM, roles=("USER", "ASSISTANT"), messages=[], sep_style=SeparatorStyle.TWO,
    sep=" ", sep2="</s>", version="v1", stop_str="</s>",
)
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=LLAVA_SYSTEM)
conv_mistral_instruct = Conversation(
    system="", roles=("USER", "ASSISTANT"), messages=[], sep_style=SeparatorStyle.LLAMA_2,
    sep="", sep2="</s>", version="llama_v2", stop_str="</s>",
)
conv_llava_llama_3 = Conversation(
    system=LLAVA_LLAMA_SYSTEM, roles=("user", "assistant"), messages=[], sep_style=SeparatorStyle.LLAMA_3,
    sep="<|eot_id|>", version="llama_v3", stop_str="<|eot_id|>",
)
conv_qwen = Conversation(
    system="You are a helpful assistant.", roles=("<|im_start|>user", "<|im_start|>assistant"), messages=[],
    sep_style=SeparatorStyle.CHATML, sep="<|im_end|>", version="qwen", stop_str="<|im_end|>",
)
conv_chatml_direct = dataclasses.replace(conv_qwen, system="Answer the questions.", version="chatml_direct")
conv_llava_plain = Conversation(
    system="", roles=("USER", "ASSISTANT"), messages=[], sep_style=SeparatorStyle.PLAIN, sep="\n", sep2="\n", version="plain",
)

conv_templates = {
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "mistral_instruct": conv_mistral_instruct,
    "llava_mistral_instruct": conv_mistral_instruct,
    "llava_llama_3": conv_llava_llama_3,
    "qwen_2": conv_qwen,
    "qwen_1_5": conv_qwen,
    "chatml_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
}
"""LLaVA's `--version` / `--conv-mode` names. Always `.copy()` before appending messages."""


def get_conversation_template(version: str) -> Conversation:
    """A fresh copy of the template named `version`, or a clear error listing the known names."""
    if version not in conv_templates:
        raise ValueError(f"unknown conversation version {version!r}; known: {sorted(conv_templates)}")
    return conv_templates[version].copy()


def stop_token_ids(tokenizer, conv_mode: str) -> list[int]:
    """EOS ids for generation: the template's end-of-turn token, then the tokenizer's eos."""
    ids = []
    stop = get_conversation_template(conv_mode).stop_str
    vocab = tokenizer.get_vocab()
    if stop and stop in vocab:
        ids.append(vocab[stop])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
