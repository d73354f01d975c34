"""LLM wrappers: one `Llava*ForCausalLM` per LLM family, all sharing `llava_arch`'s mixins."""
