"""Conversations -> (input_ids, labels), with the loss mask built together with the ids.

The template renders a conversation into `(text, supervised)` segments
(`Conversation.render_segments`). Each segment is tokenised on its own,
exactly the way `tokenizer_image_token` tokenises a prompt (its text split at
'<image>', each chunk without special tokens, one IMAGE_TOKEN_INDEX per
marker), and the pieces are concatenated; labels copy the ids of supervised
segments and are IGNORE_INDEX elsewhere. Nothing is recovered afterwards by
counting tokens, so there is no per-template offset that a new tokenizer could
break. The first segment is the inference prompt (system + first user turn +
assistant header), so training starts from exactly the ids that
`tokenizer_image_token(conv.get_prompt())` gives at inference.

All chunks of a batch of conversations go through one call of the (fast,
Rust) tokenizer, which is what makes computing 665K sample lengths cheap.
"""

from __future__ import annotations

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import Conversation, get_conversation_template
from llava.data.problems import DataProblem
from llava.mm_utils import adds_bos, bos_prefix

USER_NAMES = ("human", "user")
ASSISTANT_NAMES = ("gpt", "assistant")
SYSTEM_NAMES = ("system",)


def build_conversation(turns, version: str) -> Conversation:
    """A filled template from LLaVA turns (`{"from": "human"|"gpt"|..., "value": str}`).

    A leading system turn replaces the template's system prompt. Raises
    `DataProblem` (malformed, unknown_role, no_reply) for data that cannot be trained on.
    """
    conv = get_conversation_template(version)
    if not isinstance(turns, list) or not turns:
        raise DataProblem("malformed", f"'conversations' must be a non-empty list, got {type(turns).__name__}")
    replies = 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataProblem("malformed", f"turn {i} is not a dict with a string 'value': {str(turn)[:80]!r}")
        role = str(turn.get("from", turn.get("role", ""))).lower()
        if role in USER_NAMES:
            conv.append_message(conv.roles[0], turn["value"])
        elif role in ASSISTANT_NAMES:
            conv.append_message(conv.roles[1], turn["value"])
            replies += 1
        elif role in SYSTEM_NAMES and i == 0:
            conv.system = turn["value"]
        else:
            raise DataProblem("unknown_role", f"turn {i} has role {role!r}; expected one of "
                              f"{USER_NAMES + ASSISTANT_NAMES} (or 'system' first)")
    if not replies:
        raise DataProblem("no_reply", "the conversation has no gpt/assistant turn")
    return conv


def encode_segments(batch, tokenizer, has_image: bool = True) -> list[tuple[list[int], list[int]]]:
    """`(ids, labels)` lists for each segment list in `batch`, in one tokenizer call.

    Same rules as `tokenizer_image_token`: its BOS prefix (`bos_prefix`: a BOS
    for llama/mistral unless the text starts with it, nothing for qwen2), then each '<image>'-free chunk
    tokenised without special tokens. With `has_image=False`, '<image>' is plain text.
    """
    chunks: list[str] = []
    plans = []
    for segments in batch:
        plan = []  # (chunk index or None for an image marker, supervised)
        for text, supervised in segments:
            parts = text.split(DEFAULT_IMAGE_TOKEN) if has_image else [text]
            for j, part in enumerate(parts):
                if j:
                    plan.append((None, supervised))
                if part:
                    plan.append((len(chunks), supervised))
                    chunks.append(part)
        plans.append(plan)
    encoded = encode_texts(chunks, tokenizer)
    out = []
    with_bos = adds_bos(tokenizer)  # probed once per call, not once per conversation
    for plan, segments in zip(plans, batch):
        prefix = bos_prefix(tokenizer, segments[0][0] if segments else "", with_bos)
        ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
        for index, supervised in plan:
            piece = [IMAGE_TOKEN_INDEX] if index is None else encoded[index]
            ids.extend(piece)
            if supervised and index is not None:
                labels.extend(piece)
            else:
                labels.extend([IGNORE_INDEX] * len(piece))
        out.append((ids, labels))
    return out


def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """Ids of each text without special tokens, in one batch.

    A fast tokenizer's Rust backend is called directly: same ids as
    `tokenizer(texts, add_special_tokens=False)` (the tests compare them
    through `tokenizer_image_token`), without building a BatchEncoding.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]


def conversation_segments(turns, version: str) -> list[tuple[str, bool]]:
    return build_conversation(turns, version).render_segments()


def preprocess(sources, tokenizer, has_image: bool = False, version: str = "v1") -> dict:
    """LLaVA's entry point: `dict(input_ids=[LongTensor], labels=[LongTensor])`, one per source.

    `sources` is a list of conversations, each a list of LLaVA turns. Raises
    `DataProblem` for a conversation that cannot be trained on.
    """
    batch = [conversation_segments(turns, version) for turns in sources]
    pairs = encode_segments(batch, tokenizer, has_image=has_image)
    return dict(
        input_ids=[torch.tensor(ids, dtype=torch.long) for ids, _ in pairs],
        labels=[torch.tensor(labels, dtype=torch.long) for _, labels in pairs],
    )
