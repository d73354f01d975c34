"""The shared part of the eval scripts: LLaVA's flags, chunks, and batched answering.

`Answerer` loads a checkpoint with `load_pretrained_model` and answers
(question, image) pairs the way LLaVA's scripts do (template prompt,
`tokenizer_image_token`, `process_images`, greedy unless --temperature), but
several at once: prompts are left-padded into one batch, so each row decodes
exactly as it would alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import uuid
from pathlib import Path

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.conversation import get_conversation_template, stop_token_ids
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model


def split_list(lst, n):
    """`lst` cut into `n` consecutive chunks of ceil(len/n) items (LLaVA's rule, so chunk files line up)."""
    chunk_size = math.ceil(len(lst) / n)
    return [lst[i : i + chunk_size] for i in range(0, len(lst), chunk_size)]


def get_chunk(lst, n, k):
    """Chunk `k` of `n` (empty when there are fewer items than chunks)."""
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else lst[:0]


def add_model_args(parser: argparse.ArgumentParser, conv_mode: str = "llava_v1") -> argparse.ArgumentParser:
    """LLaVA's common eval flags, plus --batch-size and --device."""
    parser.add_argument("--model-path", type=str, required=True, help="checkpoint folder (ours or LLaVA's)")
    parser.add_argument("--model-base", type=str, default=None, help="base LLM of a LoRA / projector-only checkpoint")
    parser.add_argument("--conv-mode", type=str, default=conv_mode, help="conversation template name")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which chunk this process answers")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="longest answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=1, help="questions generated together (left-padded)")
    parser.add_argument("--device", type=str, default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    return parser


def open_answers(path):
    """The answers file, its folder created (LLaVA's scripts write one JSON object per line)."""
    path = Path(os.path.expanduser(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


class Answerer:
    """A loaded checkpoint that answers batches of (question text, PIL image or None)."""

    def __init__(self, args):
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "float16" if device.startswith("cuda") else "float32"
        self.model_name = get_model_name_from_path(os.path.expanduser(args.model_path))
        self.tokenizer, self.model, self.image_processor, self.context_len = load_pretrained_model(
            os.path.expanduser(args.model_path), args.model_base, self.model_name, device=device, torch_dtype=dtype
        )
        self.conv_mode = args.conv_mode
        if self.conv_mode is not None:
            get_conversation_template(self.conv_mode)  # an unknown name fails before any question
        self.sampling = dict(
            do_sample=args.temperature > 0, temperature=args.temperature if args.temperature > 0 else None,
            top_p=args.top_p, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True,
        )
        self.eos = stop_token_ids(self.tokenizer, self.conv_mode)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos[0]

    def chat_prompt(self, question: str) -> str:
        """The template prompt for one user turn (its image markers already in place)."""
        conv = get_conversation_template(self.conv_mode)
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def prompt(self, question: str, has_image: bool) -> str:
        """The template prompt for one question, the image marker first (LLaVA's scripts' layout)."""
        if has_image:
            marker = DEFAULT_IMAGE_TOKEN
            if getattr(self.model.config, "mm_use_im_start_end", False):
                marker = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
            question = marker + "\n" + question
        return self.chat_prompt(question)

    def _batch(self, prompts: list[str]):
        """Left-padded ids [B, T] and attention mask [B, T]."""
        rows = [tokenizer_image_token(p, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    @torch.inference_mode()
    def answer_prompts(self, jobs) -> list[str]:
        """Answers to `jobs` = [(prompt, [PIL images in marker order])], generated as one batch."""
        ids, mask = self._batch([prompt for prompt, _ in jobs])
        images = [image for _, job_images in jobs for image in job_images]
        extra = {}
        if images:
            tiles = process_images(images, self.image_processor, self.model.config)
            tiles = [t.to(self.model.device, dtype=self.model.dtype) for t in tiles]
            extra = dict(images=tiles, image_sizes=[image.size for image in images])
        out = self.model.generate(ids, attention_mask=mask, eos_token_id=self.eos, pad_token_id=self.pad_id,
                                  **extra, **self.sampling)
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def answer(self, items) -> list[str]:
        """Answers to `items` = [(question, PIL image or None)], generated as one batch."""
        return self.answer_prompts([(self.prompt(q, image is not None), [] if image is None else [image])
                                    for q, image in items])

    def answer_all(self, items, batch_size: int, progress=None) -> list[str]:
        """Answers in order, `batch_size` questions per generate call."""
        answers = []
        for start in range(0, len(items), max(1, batch_size)):
            answers += self.answer(items[start : start + batch_size])
            if progress is not None:
                progress.update(len(items[start : start + batch_size]))
        return answers


def answer_record(question_id, prompt: str, text: str, model_id: str, **extra) -> str:
    """One line of LLaVA's answers file (`answer_id` is a fresh unique id, as LLaVA's shortuuid)."""
    record = {"question_id": question_id, **extra, "prompt": prompt, "text": text,
              "answer_id": uuid.uuid4().hex[:22], "model_id": model_id, "metadata": {}}
    return json.dumps(record, ensure_ascii=False) + "\n"
