"""Inference front ends (LLaVA's `llava.serve`): the command-line chat in `llava.serve.cli`."""
