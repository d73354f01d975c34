"""Shared by the eval and client tests: a quick-start-like tiny checkpoint and tiny question files."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from llava.demo.data import COLOURS, QUESTION, draw_sample

GRID = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]  # the quick start's pinpoints


def answer_then_stop(model, tokenizer, word: str = "red") -> None:
    """Make a random tiny model answer `word` and stop, whatever it is asked (greedy).

    LLaVA's scripts generate up to 1024 tokens, which a random model fills
    (minutes on CPU). Every token embedding gets a shared direction c, the
    answer token -c; the head reads c as "say `word`" and -c as "stop", and
    these dominate the small random rest of the model.
    """
    (answer,) = tokenizer(word, add_special_tokens=False).input_ids[-1:]
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        c = torch.randn(embed.shape[1], generator=torch.Generator().manual_seed(1))
        c = c / c.norm()
        embed.add_(c)
        embed[answer] = -c
        head[answer] = 50 * c
        head[tokenizer.eos_token_id] = -50 * c


def build_checkpoint(dst: Path, llm_dir: Path, tower_dir: Path, tokenizer, seed: int = 0, stop: bool = False,
                     family: str = "llama") -> Path:
    """A full checkpoint folder as the quick start's finetune writes it (random weights; see `answer_then_stop`)."""
    from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM

    cls = LlavaQwenForCausalLM if family == "qwen2" else LlavaLlamaForCausalLM
    model = cls.from_pretrained(llm_dir, dtype=torch.float32)
    args = SimpleNamespace(
        vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu", mm_patch_merge_type="spatial_unpad",
        image_aspect_ratio="anyres", image_grid_pinpoints=GRID,
    )
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(args)
    model.config.tokenizer_model_max_length = 512
    if stop:
        answer_then_stop(model, tokenizer)
    dst = Path(dst)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    model.get_vision_tower().image_processor.save_pretrained(dst)
    return dst


def demo_images(folder: Path, count: int, seed: int = 5, blank: bool = False) -> list[tuple[str, str]]:
    """(file name, colour) of `count` demo-task images written to `folder` (blank: background only)."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 64), (112, 56), (56, 112), (96, 72)]
    out = []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        draw_sample(rng, None if blank else colour, sizes[i % len(sizes)]).save(folder / f"{i}.png")
        out.append((f"{i}.png", colour))
    return out


def write_questions(path: Path, images) -> Path:
    """model_vqa_loader's question JSONL about `images`."""
    lines = [json.dumps({"question_id": i, "image": name, "text": QUESTION}) for i, (name, _) in enumerate(images)]
    path.write_text("\n".join(lines) + "\n")
    return path


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_mmbench_tsv(path: Path, folder: Path, images, seed: int = 0) -> Path:
    """An MMBench-style TSV of the demo task: 4 colour options (the right one among them), base64 images."""
    import random

    rng = random.Random(seed)
    rows = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"]
    for i, (name, colour) in enumerate(images):
        others = rng.sample([c for c in COLOURS if c != colour], 3)
        options = others[:]
        options.insert(rng.randrange(4), colour)
        answer = "ABCD"[options.index(colour)]
        image = b64(Image.open(folder / name).convert("RGB"))
        rows.append("\t".join([str(1000 + i), QUESTION, "nan", *options, answer, "colour", image]))
    path.write_text("\n".join(rows) + "\n")
    return path
