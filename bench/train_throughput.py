"""Training throughput on a mix665K-like length mix: padded vs packed, Liger on/off, recompute settings.

Every configuration trains the same micro-batches, side by side in one run:
a Vicuna-7B-shaped LLM (random weights), a CLIP-L/336-shaped tower,
mlp2x_gelu, anyres spatial_unpad; image samples carry one 640x480 image
(2,340 image tokens, as mix665K's ~2,300) plus text, 6% are long text-only
samples (bench/mix_like.py). `--tiny` shrinks every width and length (CPU).

Micro-batches are drawn in one of two orders: `random` (the Trainer's default,
and close to LLaVA's grouping, which padded 18.4%) or `sampler` (this
package's balanced length-grouped sampler). `padded` right-pads each
micro-batch; `packed` concatenates it into one row (`--packing True`).
Reported per configuration: real (non-pad) tokens/s, padding share, step
time, peak memory and, on a GPU, MFU (model FLOPs from
`llava.train.throughput.flops_per_token` plus each sample's own causal
attention). On a GPU with flash-attn installed the script asserts, from a
profiler trace, that flash-attn's varlen kernel runs and SDPA does not.

    python bench/train_throughput.py --tiny                                # CPU, ~2 min
    python bench/train_throughput.py --liger off,on --recompute full,none  # GPU (docs/benchmarks.md)
    python bench/train_throughput.py --loss_memory 16384                   # GPU: the loss's peak memory
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mix_like import mix665k_like_lengths  # noqa: E402

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava.data.collator import DataCollatorForPackedSequences, DataCollatorForSupervisedDataset  # noqa: E402
from llava.model.attention import FLASH, flash_attn_available, use_packed_attention  # noqa: E402
from llava.model.fused_loss import enable_liger_kernel  # noqa: E402
from llava.train.llava_trainer import build_param_groups  # noqa: E402
from llava.train.sampler import modality_length_grouped_indices  # noqa: E402
from llava.train.throughput import count_batch_tokens, device_peak_flops, flops_per_token  # noqa: E402

SHAPES = {
    # LLM (Vicuna-7B) and tower (CLIP-L/336) sizes; tiny: the test fixtures' scale.
    "real": dict(hidden=4096, layers=32, heads=32, kv_heads=32, inter=11008, vocab=32000,
                 v_hidden=1024, v_layers=24, v_heads=16, v_inter=4096, tile=336),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=32000,
                 v_hidden=32, v_layers=2, v_heads=4, v_inter=64, tile=56),
}
IMAGE_WH = {"real": (640, 480), "tiny": (106, 80)}  # PIL (width, height): a 2x2 grid, unpadded to 4:3
MIX_IMAGE_TOKENS = 2340  # image tokens of a 640x480 image at CLIP-L/336: the length list's scale
PAD_ID = 0


def build_model(shape: dict, dtype, device: str, tmp: Path, stage: str, attn: str):
    from llava.demo.tiny import build_tiny_vision_tower
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    tower_dir = build_tiny_vision_tower(tmp / "tower", image_size=shape["tile"], hidden_size=shape["v_hidden"],
                                        num_layers=shape["v_layers"], num_heads=shape["v_heads"],
                                        intermediate_size=shape["v_inter"])
    config = LlavaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                         intermediate_size=shape["inter"], max_position_embeddings=8192, tie_word_embeddings=False,
                         use_cache=False, attn_implementation=attn)
    with torch.device(device):
        model = LlavaLlamaForCausalLM(config).to(dtype)
    model_args = SimpleNamespace(vision_tower=str(tower_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_projector_type="mlp2x_gelu",
                                 mm_patch_merge_type="spatial_unpad", image_aspect_ratio="anyres",
                                 image_grid_pinpoints=None)
    model.get_model().initialize_vision_modules(model_args)
    model.config.tokenizer_model_max_length = 8192
    model.requires_grad_(stage == "finetune")  # finetune: the LLM trains; the tower stays frozen in both
    model.get_vision_tower().requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)
    model.get_model().image_newline.requires_grad_(True)
    return model


def make_samples(lengths: list[int], indices, layout, shape_name: str, vocab: int, seed: int) -> dict[int, dict]:
    """Dataset-like samples for `indices`, whose post-splice lengths follow `lengths` (scaled to this image).

    Only the samples the run uses are built (a 336-px sample's tiles take 7 MB);
    each from its own seed, so a sample is the same in every configuration.
    """
    image_wh = IMAGE_WH[shape_name]
    image_tokens = layout.num_tokens(image_wh[::-1])
    tiles = layout.num_tiles(image_wh[::-1])
    scale = image_tokens / MIX_IMAGE_TOKENS
    samples = {}
    for i in sorted(set(indices)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        has_image = lengths[i] > 0
        text = max(4, round(abs(lengths[i]) * scale) - (image_tokens if has_image else 0))
        ids = torch.randint(3, vocab, (text,), generator=g)
        labels = ids.clone()
        labels[: text // 3] = IGNORE_INDEX  # the prompt
        if has_image:
            ids = torch.cat([ids[:1], torch.tensor([IMAGE_TOKEN_INDEX]), ids[1:]])
            labels = torch.cat([labels[:1], torch.tensor([IGNORE_INDEX]), labels[1:]])
        images = [torch.randn(tiles, 3, layout.tile_size, layout.tile_size, generator=g)] if has_image else []
        samples[i] = dict(input_ids=ids, labels=labels, images=images, image_sizes=[image_wh] * has_image)
    return samples


def micro_batches(lengths: list[int], batch: int, steps: int, order: str, seed: int) -> list[list[int]]:
    """`steps` micro-batches of `batch` indices: a random order, or the sampler's at 8 ranks x accumulation 2."""
    g = torch.Generator().manual_seed(seed)
    if order == "random":
        indices = torch.randperm(len(lengths), generator=g).tolist()
    else:
        indices = modality_length_grouped_indices(lengths, batch, 16, g, world_size=8)
    return [indices[k * batch : (k + 1) * batch] for k in range(steps)]


def to_device(batch: dict, device: str, dtype) -> dict:
    out = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out["images"] = [t.to(device, dtype) for t in batch["images"]]
    return out


def assert_flash_varlen(step) -> None:
    """Profile one step: flash-attn's varlen kernel must run, SDPA must not (no silent fallback)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    names = {e.name for e in prof.events()}
    assert any("flash" in n and "varlen" in n for n in names), sorted(n for n in names if "attn" in n)[:20]
    assert not any("scaled_dot_product" in n for n in names), "SDPA ran: flash-attn is not in use"


class Variant:
    """One (order, mode) column: its micro-batches, collated, and what its timed steps added up to."""

    def __init__(self, order, mode, batches, layout, flops, image_wh):
        self.order, self.mode, self.batches = order, mode, batches
        self.seconds = self.real = self.computed = 0
        self.model_flops = 0.0
        for batch in batches:
            per_sample = [_sample_tokens(ids, batch, layout) for ids in _sample_ids(batch)]
            _, tokens, slots = count_batch_tokens(batch, layout, None)
            self.real, self.computed = self.real + tokens, self.computed + slots
            tiles = len(batch["images"]) * layout.num_tiles(image_wh[::-1])
            self.model_flops += tokens * flops["llm"] + flops["attn_per_ctx"] * sum(n * n for n in per_sample) / 2
            self.model_flops += tiles * layout.tokens_per_tile * flops["vision_patch"]


def run_config(args, shape_name, liger, recompute, device, dtype, lengths, tmp) -> list[dict]:
    """One model; every (order, mode) variant's step k runs back to back, so load changes hit all alike."""
    shape = SHAPES[shape_name]
    if device == "cuda":
        gc.collect()  # what a previous configuration (or its out-of-memory traceback) left
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    model = build_model(shape, dtype, device, tmp, args.stage,
                        FLASH if device == "cuda" and flash_attn_available() else "sdpa")
    attn = use_packed_attention(model)  # flash stays flash; sdpa_packed runs padded batches as plain sdpa
    liger_on = enable_liger_kernel(model) if liger == "on" else False
    if recompute == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(build_param_groups(model, [n for n, _ in model.named_parameters()], 1e-5, 0.0),
                                  fused=device == "cuda")
    train_step = lambda batch: _train_step(model, optimizer, batch, device, dtype)  # noqa: E731
    variants = make_variants(args, model, lengths, shape_name, train_step)
    if attn == FLASH:
        for variant in variants:
            assert_flash_varlen(lambda: train_step(variant.batches[0]))
    time_variants(variants, args.steps, train_step, device)
    peak = device_peak_flops() if device == "cuda" else None
    results = [dict(stage=args.stage, mode=v.mode, order=v.order, liger=liger, liger_applied=liger_on,
                    recompute=recompute, attn="sdpa" if v.mode == "padded" and attn != FLASH else attn,
                    step_s=round(v.seconds / args.steps, 4), real_tokens_per_s=round(v.real / v.seconds, 1),
                    padding_share=round(1 - v.real / v.computed, 4),
                    mfu=round(v.model_flops / v.seconds / peak, 4) if peak else None,
                    # one model for all variants: the peak is the largest variant's
                    peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None)
               for v in variants]
    del model, optimizer
    return results


def make_variants(args, model, lengths, shape_name, train_step) -> list[Variant]:
    """Each (order, mode) variant's collated micro-batches; its warm-up steps run here."""
    layout = model.get_image_layout()
    groups = {o: micro_batches(lengths, args.batch, args.warmup + args.steps, o, args.seed) for o in args.orders}
    used = [i for order_groups in groups.values() for group in order_groups for i in group]
    samples = make_samples(lengths, used, layout, shape_name, SHAPES[shape_name]["vocab"], args.seed)
    flops = flops_per_token(model)
    variants = []
    for order in args.orders:
        for mode in args.modes:
            collate = (DataCollatorForPackedSequences if mode == "packed" else DataCollatorForSupervisedDataset)(
                SimpleNamespace(pad_token_id=PAD_ID))
            batches = [collate([samples[i] for i in group]) for group in groups[order]]
            variants.append(Variant(order, mode, batches[args.warmup :], layout, flops, IMAGE_WH[shape_name]))
            for batch in batches[: args.warmup]:
                train_step(batch)
    return variants


def time_variants(variants: list[Variant], steps: int, train_step, device: str) -> None:
    """Step k of every variant back to back, for k in range(steps); adds each step's time to its variant."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k in range(steps):
        for variant in variants:
            sync()
            start = time.perf_counter()
            train_step(variant.batches[k])
            sync()
            variant.seconds += time.perf_counter() - start


def _train_step(model, optimizer, batch, device, dtype):
    batch = to_device(batch, device, dtype)
    n_items = batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()  # the Trainer's count: token mean over the step
    model(**batch, num_items_in_batch=n_items).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sample_tokens(ids: torch.Tensor, batch: dict, layout) -> int:
    """Tokens of one sample after the splice (every image here has the same size)."""
    markers = int((ids == IMAGE_TOKEN_INDEX).sum())
    image_wh = batch["image_sizes"][0] if markers else None
    return int(ids.shape[0]) - markers + (markers * layout.num_tokens(image_wh[::-1]) if markers else 0)


def _sample_ids(batch: dict) -> list[torch.Tensor]:
    """Each sample's ids (images as their markers), padded or packed."""
    if batch.get("attention_mask") is None:
        from llava.model.splice import sample_lengths

        return list(batch["input_ids"].reshape(-1).split(sample_lengths(batch["position_ids"])))
    return [row[m] for row, m in zip(batch["input_ids"], batch["attention_mask"])]


def loss_memory(tokens: int, hidden: int = 4096) -> list[dict]:
    """GPU: peak memory of the loss alone (forward + backward), transformers' path vs Liger's fused one."""
    from llava.model.fused_loss import linear_cross_entropy, liger_linear_loss, liger_unavailable_reason

    rows = []
    for vocab in (32000, 128256):  # Vicuna / Llama-2, Llama-3
        for name, fn in (("plain", linear_cross_entropy), ("liger", liger_linear_loss)):
            if name == "liger" and liger_unavailable_reason():
                continue
            h = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            w = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            t = torch.randint(vocab, (tokens,), device="cuda")
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(h, w, t, tokens).backward()
            torch.cuda.synchronize()
            rows.append(dict(vocab=vocab, tokens=tokens, loss=name,
                             peak_over_inputs_gib=round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)))
            del h, w, t
    return rows


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny widths and lengths on CPU instead of 7B / CLIP-L")
    parser.add_argument("--stage", choices=["finetune", "pretrain"], default="finetune",
                        help="finetune: LLM + projector train; pretrain: projector and image_newline only")
    parser.add_argument("--modes", default="padded,packed", help="comma list of padded, packed")
    parser.add_argument("--orders", default=None, help="comma list of random, sampler (default: random,sampler "
                                                       "tiny; sampler on a GPU)")
    parser.add_argument("--liger", default="off", help="comma list of off, on (on: --use_liger_kernel's path)")
    parser.add_argument("--recompute", default="none", help="comma list of none, full (gradient checkpointing)")
    parser.add_argument("--batch", type=int, default=8, help="samples per micro-batch (the finetune scripts' 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (20 tiny, 10 GPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--samples", type=int, default=20000, help="size of the synthetic length list")
    parser.add_argument("--seed", type=int, default=0, help="seed of the lengths, order and token ids")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    parser.add_argument("--loss_memory", type=int, default=0, metavar="TOKENS",
                        help="GPU only: measure the loss's peak memory at this many tokens (plain vs Liger), then exit")
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.tiny else 10)
    args.orders = (args.orders or ("random,sampler" if args.tiny else "sampler")).split(",")
    args.modes = args.modes.split(",")
    return args


def add_speedups(results: list[dict], first_order: str) -> None:
    """Each result's real tokens/s over the padded run of `first_order` with the same Liger / recompute setting."""
    for r in results:
        ref = next((x for x in results if x["mode"] == "padded" and "oom" not in x and x["liger"] == r["liger"]
                    and x["recompute"] == r["recompute"] and x["order"] == first_order), None)
        if ref and "oom" not in r:
            r[f"vs_padded_{first_order}"] = round(r["real_tokens_per_s"] / ref["real_tokens_per_s"], 3)


def main():
    args = parse_args()
    if args.loss_memory:
        print(json.dumps(loss_memory(args.loss_memory), indent=2))
        return
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape_name = "tiny" if args.tiny else "real"
    if args.tiny:
        torch.set_num_threads(1)  # steadier on a shared CPU
    lengths = mix665k_like_lengths(args.samples, args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (liger, recompute) in enumerate(itertools.product(args.liger.split(","), args.recompute.split(","))):
            try:
                results += run_config(args, shape_name, liger, recompute, device, dtype, lengths, Path(tmp) / str(k))
            except torch.OutOfMemoryError:
                results += [dict(stage=args.stage, mode=m, order=o, liger=liger, recompute=recompute, oom=True)
                            for o in args.orders for m in args.modes]
            print(json.dumps(results[-len(args.orders) * len(args.modes):]), flush=True)
    add_speedups(results, args.orders[0])
    device_name = torch.cuda.get_device_name() if cuda else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    report = dict(shape="tiny" if args.tiny else "vicuna7b+clipL336", dtype=str(dtype).removeprefix("torch."),
                  device=device_name, batch=args.batch, steps=args.steps,
                  peak_flops=device_peak_flops() if cuda else None, results=results)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
