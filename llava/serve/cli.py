"""Chat about one image in the terminal, LLaVA's `python -m llava.serve.cli`.

    python -m llava.serve.cli --model-path ./checkpoints/llava-next-vicuna-7b-sft --image-file photo.jpg
    python -m llava.serve.cli --model-path ./checkpoints/llava-next-vicuna-7b-sft-hf --image-file photo.jpg --device cpu

Reads one user turn per line from stdin (an empty line or end of input
stops) and streams the reply token by token. The image goes with the first
turn. Two kinds of folders run:

- our checkpoints (full, or LoRA / projector-only with `--model-base`),
  through LLaVA's entry points: `load_pretrained_model`, `conv_templates`,
  `tokenizer_image_token`, `process_images`;
- a folder written by `convert_llava_next_weights_to_hf.sh` (its config says
  `llava_next`), through transformers' `LlavaNextForConditionalGeneration`,
  `AutoProcessor` and the chat template stored with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image


def is_hf_llava_next(model_path) -> bool:
    config = Path(model_path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "llava_next"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_image(path: str) -> Image.Image:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--image-file {path!r} is not a file (only local files are read)")
    return Image.open(path).convert("RGB")


def sampling(args) -> dict:
    """generate() kwargs for --temperature (0 = greedy) and --max-new-tokens."""
    if args.temperature > 0:
        return dict(do_sample=True, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    return dict(do_sample=False, max_new_tokens=args.max_new_tokens)


def turns(stdin):
    """User lines until an empty line or end of input, each echoed after a LLaVA-style prompt."""
    while True:
        print("USER: ", end="", flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            print()
            return
        yield line.strip()


class OurChat:
    """LLaVA's chat loop over our checkpoint."""

    def __init__(self, args):
        import torch

        from llava.conversation import stop_token_ids
        from llava.export.chat_template import guess_conv_mode
        from llava.mm_utils import get_model_name_from_path, process_images
        from llava.model.builder import load_pretrained_model

        dtype = "float16" if args.device.startswith("cuda") else "float32"
        self.tokenizer, self.model, processor, _ = load_pretrained_model(
            args.model_path, args.model_base, get_model_name_from_path(args.model_path), args.load_8bit, args.load_4bit,
            device=args.device, torch_dtype=dtype,
        )
        guessed = guess_conv_mode(self.tokenizer)
        if args.conv_mode and args.conv_mode != guessed:
            print(f"[note] --conv-mode {args.conv_mode} given; the tokenizer suggests {guessed}", file=sys.stderr)
        self.conv_mode = args.conv_mode or guessed
        from llava.conversation import get_conversation_template

        self.conv = get_conversation_template(self.conv_mode)
        self.image = load_image(args.image_file)
        self.tiles = process_images([self.image], processor, self.model.config)
        self.tiles = [t.to(self.model.device, dtype=self.model.dtype) for t in self.tiles] \
            if isinstance(self.tiles, list) else self.tiles.to(self.model.device, dtype=self.model.dtype)
        self.eos = stop_token_ids(self.tokenizer, self.conv_mode)
        self.first = True
        self.torch = torch

    def reply(self, text: str, args) -> str:
        from transformers import TextStreamer

        from llava.mm_utils import tokenizer_image_token

        if self.first:
            text, self.first = "<image>\n" + text, False
        self.conv.append_message(self.conv.roles[0], text)
        self.conv.append_message(self.conv.roles[1], None)
        ids = tokenizer_image_token(self.conv.get_prompt(), self.tokenizer, return_tensors="pt")[None].to(self.model.device)
        streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with self.torch.inference_mode():
            out = self.model.generate(ids, images=self.tiles, image_sizes=[self.image.size], streamer=streamer,
                                      eos_token_id=self.eos, pad_token_id=self.tokenizer.pad_token_id, **sampling(args))
        answer = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        self.conv.messages[-1][-1] = answer
        return answer


class HFChat:
    """The same loop over a converted transformers folder, with its processor and chat template."""

    def __init__(self, args):
        import torch
        from transformers import AutoProcessor, LlavaNextForConditionalGeneration

        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        self.model = LlavaNextForConditionalGeneration.from_pretrained(args.model_path, dtype=dtype).to(args.device).eval()
        self.processor = AutoProcessor.from_pretrained(args.model_path)
        self.image = load_image(args.image_file)
        self.messages = []
        self.torch = torch

    def reply(self, text: str, args) -> str:
        from transformers import TextStreamer

        content = [{"type": "text", "text": text}]
        if not self.messages:
            content.insert(0, {"type": "image"})
        self.messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(self.messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(images=self.image, text=prompt, return_tensors="pt").to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        streamer = TextStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, streamer=streamer, **sampling(args))
        answer = self.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return answer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="our checkpoint, or a converted transformers folder")
    parser.add_argument("--model-base", default=None, help="base LLM folder for a LoRA or projector-only checkpoint")
    parser.add_argument("--image-file", required=True, help="local image to talk about")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: from the tokenizer)")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true", help="8-bit LLM weights (bitsandbytes, CUDA)")
    parser.add_argument("--load-4bit", action="store_true", help="4-bit LLM weights (bitsandbytes, CUDA)")
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    return args


def main(argv=None, stdin=None):
    args = parse_args(argv)
    hf = is_hf_llava_next(args.model_path)
    if hf and (args.model_base or args.load_4bit or args.load_8bit):
        raise ValueError("--model-base / --load-4bit / --load-8bit apply to our checkpoints, not converted folders")
    chat = HFChat(args) if hf else OurChat(args)
    role = "ASSISTANT"
    for text in turns(stdin or sys.stdin):
        print(f"{role}: ", end="", flush=True)
        chat.reply(text, args)  # the streamer prints the reply and a newline


if __name__ == "__main__":
    main()
