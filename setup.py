"""Install with `pip install -e ".[train]"` (after `pip install torch==2.13.0`)."""

from setuptools import find_packages, setup

setup(
    name="llava-next",
    version="0.1.0",
    description="Train LLaVA-NeXT vision-language models: anyres tiling, two-stage recipe, DeepSpeed, LoRA, HF export",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["llava", "llava.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",  # a pinned torch==2.13.0 satisfies this; never torchvision
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "pillow>=10",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "sentencepiece>=0.2",
        "protobuf>=4",
    ],
    extras_require={
        "train": [
            "deepspeed>=0.15",
            "peft>=0.13",
            "accelerate>=1.0",
            "wandb>=0.18",
            "tensorboard>=2.15",
            "bitsandbytes>=0.44; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
    },
)
