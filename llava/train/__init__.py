"""Training: `train.py` (LLaVA's entry point), its arguments, LLaVATrainer, LoRA, saving and throughput logs."""
