"""Packaging for `llava` (LLaVA-NeXT training).

Install torch first (`pip install torch==2.13.0`, or the CUDA build your
machine needs), then `pip install -e ".[train]"`. The torch requirement below
is a range on purpose: a torch that is already installed and inside it is kept,
so pip never swaps a CPU build for a CUDA one (or the other way round).
torchvision is not needed anywhere: images go through PIL and transformers'
PIL image processors.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"

INSTALL_REQUIRES = [
    "torch>=2.4,<3",  # a pinned torch==2.13.0 satisfies this
    "transformers>=5.0,<6",  # LlavaNext*Pil processors and the v5 weight layout
    "tokenizers>=0.21,<1",
    "safetensors>=0.4",
    "huggingface_hub>=1.0",
    "pillow>=10",
    "numpy>=1.26",
    "pyyaml>=6",
    "tqdm>=4.66",
    "orjson>=3.9",  # the compact record store (llava/data/record_store.py)
    "sentencepiece>=0.2",
    "protobuf>=4",
]

# bitsandbytes (QLoRA, --bits 4/8) ships Linux wheels for these machines only;
# on others the extra installs without it and --bits 4 fails with a clear error.
BNB_MARKER = "platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')"

EXTRAS_REQUIRE = {
    "train": [
        "deepspeed>=0.15,<1",  # build with DS_BUILD_OPS=0: ops are compiled on first use
        "peft>=0.13",
        "accelerate>=1.0",
        "wandb>=0.18",
        "tensorboard>=2.15",
        f"bitsandbytes>=0.44; {BNB_MARKER}",
    ],
    # shortuuid, pandas: imported by the upstream LLaVA eval scripts the client tests run verbatim
    "test": ["pytest>=8", "pytest-timeout>=2.3", "shortuuid>=1.0", "pandas>=2.0", "radon>=6"],  # radon: tests/test_layout.py
}

setup(
    name="llava-next",
    version="0.1.0",
    description="Train LLaVA-NeXT vision-language models: anyres tiling, two-stage recipe, DeepSpeed, LoRA, HF export",
    long_description=README.read_text(encoding="utf-8") if README.is_file() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["llava", "llava.*"]),
    # The real tokenizers the quick start and the tests build tiny models with.
    package_data={"llava.demo": ["tokenizers/SOURCE.md", "tokenizers/*/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
