"""LLaVA's conversation templates: one small record per separator style, two renderers.

Users, LLaVA's scripts and lmms-eval drive these objects the LLaVA way::

    conv = conv_templates["v1"].copy()
    conv.append_message(conv.roles[0], "<image>\\nWhat is this?")
    conv.append_message(conv.roles[1], None)      # None: the model answers here
    prompt = conv.get_prompt()

Every template name of LLaVA-1.5 and LLaVA-NeXT is here, and `get_prompt()`
returns exactly their string (tests compare against their files, vendored).

How a style lays out a conversation is one `TurnFormat` record of format
strings. Three things are generated from it, so they cannot drift apart:
- `get_prompt()`: the prompt string, as LLaVA's `get_prompt()`;
- `render_segments()`: the training text as `(text, supervised)` pieces; each
  supervised piece is one reply plus its end-of-turn marker (so the loss mask
  needs no per-template token offsets);
- the Jinja chat template of converted folders (`llava.export.chat_template`).

Training and `get_prompt()` differ only where LLaVA's do: `plain`
(pretraining keeps only the image markers of the human turn, as LLaVA's
`preprocess_plain`), and Llama-3, whose `get_prompt()` always ends with the
assistant header because LLaVA-NeXT renders it with `add_generation_prompt=True`.
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    """LLaVA-NeXT's style names (LLaVA-1.5's are a subset); see `FORMATS` for each layout."""

    SINGLE = auto()  # v0: "SYSTEM###Human: q###Assistant: a###"
    TWO = auto()  # vicuna v1: "SYSTEM USER: q ASSISTANT: a</s>"
    MPT = auto()  # mpt / chatml_direct: "<|im_start|>system\nS<|im_end|><|im_start|>user\nq<|im_end|>..."
    PLAIN = auto()  # pretraining: "<image>caption\n"
    CHATML = auto()  # Qwen: "<|im_start|>user\nq<|im_end|>\n"
    LLAMA_2 = auto()  # "[INST] <<SYS>>\nS\n<</SYS>>\n\nq [/INST] a </s>"
    LLAMA_3 = auto()  # Llama-3-Instruct headers, every message trimmed, turns end with <|eot_id|>
    QWEN = auto()  # declared by LLaVA-NeXT, used by no template
    GEMMA = auto()  # "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\n"


@dataclasses.dataclass(frozen=True)
class TurnFormat:
    """One style's layout as format strings.

    Fields available: {system} (the system text, with the template's
    `system_prefix`), {sys} (the rendered system block), {role} (the turn's role
    name as the template spells it), {text}, {sep}, {sep2}.
    """

    start: str
    """Text before the first turn; usually "{sys}"."""
    system: str
    """The system block {sys} when the system text is not empty."""
    system_empty: str
    """The system block when it is empty."""
    user: str
    """A user turn."""
    header: str
    """The assistant header; alone it is the generation prompt."""
    reply: str
    """The supervised piece: "{text}" framed by what trains with it (leading space, end-of-turn marker)."""
    user_first: str | None = None
    """The first user turn, when it differs (Llama-2 puts the system block inside it)."""
    after_reply: str = ""
    """Unsupervised text after each reply (ChatML's newline)."""
    strip: bool = False
    """Trim every message (Llama-3's chat template does)."""
    always_generation_prompt: bool = False
    """`get_prompt()` always ends with the assistant header (LLaVA-NeXT renders Llama-3 with add_generation_prompt)."""
    train_images_only: bool = False
    """Training keeps only the user turn's image markers, with no separator (LLaVA's `preprocess_plain`)."""
    alternate_roles: bool = False
    """Roles must alternate user/assistant (LLaVA-NeXT asserts it for Gemma)."""


_L3 = "<|start_header_id|>{role}<|end_header_id|>\n\n"
FORMATS = {
    SeparatorStyle.SINGLE: TurnFormat(start="{sys}", system="{system}{sep}", system_empty="{sep}",
                                      user="{role}: {text}{sep}", header="{role}:", reply=" {text}{sep}"),
    SeparatorStyle.TWO: TurnFormat(start="{sys}", system="{system}{sep}", system_empty="{sep}",
                                   user="{role}: {text}{sep}", header="{role}:", reply=" {text}{sep2}"),
    SeparatorStyle.MPT: TurnFormat(start="{sys}", system="{system}{sep}", system_empty="{sep}",
                                   user="{role}{text}{sep}", header="{role}", reply="{text}{sep}"),
    SeparatorStyle.GEMMA: TurnFormat(start="", system="", system_empty="", user="{role}{text}{sep}",
                                     header="{role}", reply="{text}{sep}", alternate_roles=True),
    SeparatorStyle.CHATML: TurnFormat(start="{sys}", system="{system}{sep}\n", system_empty="",
                                      user="{role}\n{text}{sep}\n", header="{role}\n", reply="{text}{sep}",
                                      after_reply="\n"),
    SeparatorStyle.LLAMA_2: TurnFormat(start="", system="<<SYS>>\n{system}\n<</SYS>>\n\n", system_empty="",
                                       user_first="[INST] {sys}{text} [/INST]", user="{sep}[INST] {text} [/INST]",
                                       header="", reply=" {text} {sep2}"),
    SeparatorStyle.LLAMA_3: TurnFormat(start="<|begin_of_text|>{sys}",
                                       system=_L3.replace("{role}", "system") + "{system}<|eot_id|>",
                                       system_empty=_L3.replace("{role}", "system") + "<|eot_id|>",
                                       user=_L3 + "{text}<|eot_id|>", header=_L3, reply="{text}<|eot_id|>",
                                       strip=True, always_generation_prompt=True),
    SeparatorStyle.PLAIN: TurnFormat(start="{system}", system="", system_empty="", user="{text}{sep}", header="",
                                     reply="{text}{sep}", train_images_only=True),
}
"""The layout of every style. LLaVA's `plain` has sep2=None and cannot render a reply; ours ends it with sep,
as LLaVA's pretraining does."""

LLAMA3_BOS = "<|begin_of_text|>"


@dataclasses.dataclass
class Conversation:
    """One conversation template plus the messages appended so far (LLaVA's object and field names)."""

    system: str
    """System prompt text, without the template's `system_prefix` (given with it, it is not doubled)."""
    roles: tuple
    """(user role, assistant role) as LLaVA spells them; they are also the text the turns render with."""
    messages: list
    """`[role, text]` pairs; text None marks the open slot the model fills at inference."""
    offset: int = 0
    """LLaVA's count of few-shot messages hidden from chat UIs (kept for compatibility)."""
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    """Which `FORMATS` record lays the conversation out."""
    sep: str = "###"
    """The style's separator ({sep} in the record)."""
    sep2: str | None = None
    """The second separator ({sep2}), the reply's end in TWO / LLAMA_2."""
    version: str = "Unknown"
    """LLaVA's version tag (`v1`, `llama_v2`, `mpt`, ...; `mmtag` in it changes how a tuple image message renders)."""
    stop_str: str | None = None
    """Text at which generation should stop (the end-of-turn marker)."""
    system_prefix: str = ""
    """Header LLaVA writes inside its system text for MPT / ChatML templates ("<|im_start|>system\\n")."""
    skip_next: bool = False
    """LLaVA's gradio flag (unused here)."""
    stop_token_ids: list | None = None
    """LLaVA-NeXT's field: token ids that stop generation, when the template knows them."""
    tokenizer_id: str = ""
    """LLaVA-NeXT's field: the hub tokenizer its Llama-3 template renders with (not needed here)."""
    tokenizer: Any = None
    """LLaVA-NeXT's field (not needed: the Llama-3 layout is rendered from `FORMATS`)."""

    # ------------------------------------------------------------------ LLaVA API

    def append_message(self, role, message):
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[[r, m] for r, m in self.messages])

    def get_prompt(self) -> str:
        """The prompt string, exactly LLaVA's / LLaVA-NeXT's `get_prompt()` for the same template and messages."""
        return "".join(text for text, _ in self._render(training=False))

    def render_segments(self) -> list[tuple[str, bool]]:
        """The training text as `(text, supervised)` pieces, in order; neighbours differ in flag.

        A message with text None is the open assistant slot: its header is
        rendered (the generation prompt) and nothing after it.
        """
        return self._render(training=True)

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
    def format(self) -> TurnFormat:
        if self.sep_style not in FORMATS:
            raise ValueError(f"separator style {self.sep_style.name} has no layout (LLaVA-NeXT defines none either)")
        return FORMATS[self.sep_style]

    @property
    def reply_prefix(self) -> str:
        """Text between the assistant header and the reply; it belongs to the supervised piece."""
        return self._fill(self.format.reply.split("{text}")[0])

    @property
    def end_of_turn(self) -> str:
        """The marker that closes every assistant reply (trained on, so the model learns to stop)."""
        return self._fill(self.format.reply.split("{text}")[1])

    def system_text(self) -> str:
        """The system text with the template's prefix, added once."""
        if not self.system or self.system.startswith(self.system_prefix):
            return self.system
        return self.system_prefix + self.system

    def _fill(self, fmt: str, **fields) -> str:
        return fmt.format(sep=self.sep, sep2=self.sep2 if self.sep2 is not None else "", **fields)

    def _render(self, training: bool) -> list[tuple[str, bool]]:
        fmt = self.format
        out: list[tuple[str, bool]] = []
        emit = _Emitter(out)
        system = self.system_text()
        sys_block = self._fill(fmt.system if system else fmt.system_empty,
                               system=system.strip() if fmt.strip else system)
        if not (training and fmt.train_images_only):  # LLaVA's pretraining text has no system part
            emit(self._fill(fmt.start, sys=sys_block, system=system))
        user_role, bot_role = self.roles[0], self.roles[1]
        open_slot = False
        for i, (role, message) in enumerate(_with_image_first(self)):
            text = _text(message)
            if text is not None and fmt.strip:
                text = text.strip()
            if fmt.alternate_roles and role != self.roles[i % 2]:
                raise ValueError(f"message {i} has role {role!r}; this template needs alternating {tuple(self.roles)}")
            if role == user_role and (i % 2 == 0 or user_role != bot_role):
                emit(self._user_turn(fmt, text, first=i == 0, sys_block=sys_block, training=training))
            elif role == bot_role:
                emit(self._fill(fmt.header, role=role))
                open_slot = text is None
                if open_slot:
                    break
                emit(self._fill(fmt.reply, text=text), supervised=True)
                emit(self._fill(fmt.after_reply))
            else:
                raise ValueError(f"role {role!r} is not one of this template's roles {tuple(self.roles)}")
        if fmt.always_generation_prompt and not training and not open_slot:
            emit(self._fill(fmt.header, role=bot_role))
        return out

    def _user_turn(self, fmt: TurnFormat, text: str, first: bool, sys_block: str, training: bool) -> str:
        if training and fmt.train_images_only:
            return DEFAULT_IMAGE_TOKEN * text.count(DEFAULT_IMAGE_TOKEN)
        template = fmt.user_first if first and fmt.user_first is not None else fmt.user
        return self._fill(template, role=self.roles[0], text=text, sys=sys_block)


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


def _text(message):
    """LLaVA's gradio code stores `(text, image, mode)` tuples; only the text is rendered."""
    return message[0] if isinstance(message, tuple) else message


def _with_image_first(conv: Conversation) -> list:
    """LLaVA-NeXT's handling of a gradio `(text, image, mode)` first message: the image marker goes first.

    `mmtag` templates instead open with a "<Image><image></Image>" / "Received." exchange.
    """
    messages = list(conv.messages)
    if not messages or not isinstance(messages[0][1], tuple):
        return messages
    role, text = messages[0][0], messages[0][1][0]
    if "mmtag" in conv.version:
        return [[conv.roles[0], "<Image><image></Image>"], [conv.roles[1], "Received."],
                [role, text.replace(DEFAULT_IMAGE_TOKEN, "").strip()]] + messages[1:]
    if not text.startswith(DEFAULT_IMAGE_TOKEN):
        text = DEFAULT_IMAGE_TOKEN + "\n" + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return [[role, text]] + messages[1:]


# ----------------------------------------------------------------------------- the templates

HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user with "
    "a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
LLAVA_LLAMA_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
LLAMA_2_SIMPLE_SYSTEM = "Answer the questions about the visual content that the user provides."
# LLaVA's v0 template carries one example exchange (hidden from chat UIs by offset=2).
V0_EXAMPLE = [
    ["Human", "What are the key differences between renewable and non-renewable energy sources?"],
    ["Assistant",
     "Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, "
     "such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are "
     "finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences "
     "between renewable and non-renewable energy sources:\n"
     "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources "
     "are finite and will eventually run out.\n"
     "2. Environmental impact: Renewable energy sources have a much lower environmental impact than non-renewable "
     "sources, which can lead to air and water pollution, greenhouse gas emissions, and other negative effects.\n"
     "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have lower "
     "operational costs than non-renewable sources.\n"
     "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote locations "
     "than non-renewable sources.\n"
     "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different situations "
     "and needs, while non-renewable sources are more rigid and inflexible.\n"
     "6. Sustainability: Renewable energy sources are more sustainable over the long term, while non-renewable "
     "sources are not, and their depletion can lead to economic and social instability.\n"],
]
IM_SYSTEM = "<|im_start|>system\n"

_C = Conversation
conv_vicuna_v0 = _C(HUMAN_SYSTEM, ("Human", "Assistant"), V0_EXAMPLE, offset=2, sep_style=SeparatorStyle.SINGLE,
                    sep="###", stop_str="###")
conv_llava_v0 = _C(HUMAN_SYSTEM, ("Human", "Assistant"), [], sep_style=SeparatorStyle.SINGLE, sep="###",
                   stop_str="###")
conv_llava_v0_mmtag = dataclasses.replace(conv_llava_v0, system=MMTAG_SYSTEM, version="v0_mmtag")
conv_vicuna_v1 = _C(VICUNA_SYSTEM, ("USER", "ASSISTANT"), [], sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
                    version="v1", stop_str="</s>")
conv_llava_v1 = dataclasses.replace(conv_vicuna_v1, system=HUMAN_SYSTEM)
conv_llava_v1_mmtag = dataclasses.replace(conv_vicuna_v1, system=MMTAG_SYSTEM, version="v1_mmtag")
conv_llama_2 = _C(LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), [], sep_style=SeparatorStyle.LLAMA_2, sep="<s>",
                  sep2="</s>", version="llama_v2", stop_str="</s>")
conv_llava_llama_2 = dataclasses.replace(conv_llama_2, system=LLAVA_LLAMA_SYSTEM)
conv_llava_llama_2_simple = dataclasses.replace(conv_llama_2, system=LLAMA_2_SIMPLE_SYSTEM)
conv_llava_llama_2_mmtag = dataclasses.replace(
    conv_llama_2, system=LLAMA_2_SIMPLE_SYSTEM + "The visual content will be provided with the following format: "
    "<Image>visual content</Image>.", version="llama_v2_mmtag")
conv_mistral_instruct = dataclasses.replace(conv_llama_2, system="", sep="")
conv_llava_llama_3 = _C(LLAVA_LLAMA_SYSTEM, ("user", "assistant"), [], sep_style=SeparatorStyle.LLAMA_3,
                        sep="<|eot_id|>", version="llama_v3", stop_str="<|eot_id|>",
                        tokenizer_id="meta-llama/Meta-Llama-3-8B-Instruct", stop_token_ids=[128009])
conv_mpt = _C("A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest "
              "answers.", ("<|im_start|>user\n", "<|im_start|>assistant\n"), [], sep_style=SeparatorStyle.MPT,
              sep="<|im_end|>", version="mpt", stop_str="<|im_end|>", system_prefix=IM_SYSTEM)
conv_chatml_direct = dataclasses.replace(conv_mpt, system="Answer the questions.")
conv_mistral_orca = dataclasses.replace(
    conv_mpt, system="You are MistralOrca, a large language model trained by Alignment Lab AI. Write out your "
    "reasoning step-by-step to be sure you get the right answers!")
conv_mistral_zephyr = _C("You are a helpful AI assistant.", ("<|user|>\n", "<|assistant|>\n"), [],
                         sep_style=SeparatorStyle.MPT, sep="</s>", version="mpt", stop_str="</s>",
                         system_prefix="<|system|>\n")
conv_qwen = _C("You are a helpful assistant.", ("<|im_start|>user", "<|im_start|>assistant"), [],
               sep_style=SeparatorStyle.CHATML, sep="<|im_end|>", version="qwen", stop_str="<|im_end|>",
               system_prefix=IM_SYSTEM)
conv_qwen_2_5 = dataclasses.replace(conv_qwen, system="You are Qwen, created by Alibaba Cloud. You are a helpful "
                                    "assistant.")
conv_gemma_instruct = _C("", ("<start_of_turn>user\n", "<start_of_turn>model\n"), [], sep_style=SeparatorStyle.GEMMA,
                         sep="<end_of_turn>\n", version="gemma", stop_str="<end_of_turn>")
conv_llava_plain = _C("", ("", ""), [], sep_style=SeparatorStyle.PLAIN, sep="\n", version="plain")

default_conversation = conv_vicuna_v0
"""LLaVA-NeXT's default (LLaVA-1.5 used `conv_vicuna_v1`); nothing here reads it."""

conv_templates = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "mistral_orca": conv_mistral_orca,
    "mistral_zephyr": conv_mistral_zephyr,
    "mistral_direct": conv_chatml_direct,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "chatml_direct": conv_chatml_direct,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "llava_llama_3": conv_llava_llama_3,
    "llava_llama_2_simple": conv_llava_llama_2_simple,
    "llava_llama_2_mmtag": conv_llava_llama_2_mmtag,
    "llava_mistral_instruct": conv_mistral_instruct,
    "mpt": conv_mpt,
    "qwen_1_5": conv_qwen,
    "qwen_2": conv_qwen,
    "qwen_2_5": conv_qwen_2_5,
    "gemma_instruct": conv_gemma_instruct,
}
"""LLaVA's and LLaVA-NeXT's `--version` / `--conv-mode` names. Always `.copy()` before appending messages."""


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
