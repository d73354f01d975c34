"""LLaVA's evaluation entry points (`python -m llava.eval.model_vqa_loader ...`), our implementation.

Same command lines and output files as LLaVA's `llava/eval/*.py`, plus
`--batch-size` (left-padded batched generation, same answers as batch 1) and
`--device`. Scorers: `python -m llava.eval.score {mmbench,textvqa,pope,sqa,gqa}`.
"""
