"""The CPU quick start (`bash scripts/next/tiny/demo.sh`): tiny models, a synthetic task, an evaluator.

- `llava.demo.prepare`: tiny random "pretrained" LLM and vision tower folders
  (real vendored tokenizer) and the synthetic dataset;
- `llava.demo.data`: the dataset itself (name the colour of the shape);
- `llava.demo.evaluate`: accuracy of a converted transformers model with
  `generate`, on held-out images and on blank ones.
"""
