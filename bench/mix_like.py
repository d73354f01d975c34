"""A synthetic mix665K-like length list (issue 10), shared by the sampler tests and the throughput benchmark.

94% anyres image samples (about 2,300 image tokens each plus a short
conversation), 6% long text-only samples; median about 2,550 tokens. Lengths
are signed as `modality_lengths` are: positive with an image, negative without.
"""

from __future__ import annotations

import torch

IMAGE_SHARE = 0.94


def mix665k_like_lengths(n: int, seed: int = 0, scale: float = 1.0) -> list[int]:
    """`n` signed lengths; `scale` shrinks every length (the CPU benchmark runs at 1/16)."""
    g = torch.Generator().manual_seed(seed)
    has_image = torch.rand(n, generator=g) < IMAGE_SHARE
    image = (torch.randn(n, generator=g) * 250 + 2300).clamp(1700, 2928)
    text = torch.exp(torch.randn(n, generator=g) * 0.9 + 5.5).clamp(20, 2000)  # median ~245 tokens
    long_text = torch.exp(torch.randn(n, generator=g) * 0.6 + 7.4).clamp(200, 4096)  # median ~1,640 tokens
    lengths = torch.where(has_image, image + text, -long_text).clamp(-4096, 4096) * scale  # model_max_length 4096
    return [int(x) if x > 0 else min(int(x), -1) for x in lengths.round().tolist()]
