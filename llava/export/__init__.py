"""Export to transformers: the converter, its logit check, the chat template and the state-dict mapping."""
