"""The fused-loss path of `--use_liger_kernel` (hidden states + lm_head weight -> loss), checked on CPU.

Liger's kernels need a GPU; here the wiring is held to transformers' loss with
the plain-torch kernel of the same contract: same loss and gradients, padded
and packed, with num_items_in_batch, and no logits returned. Without
liger-kernel or a GPU, enabling it warns once and changes nothing.
"""

import logging

import pytest
import torch

from llava.data.collator import DataCollatorForPackedSequences, DataCollatorForSupervisedDataset
from llava.model import LlavaLlamaForCausalLM
from llava.model.fused_loss import enable_liger_kernel, linear_cross_entropy, liger_unavailable_reason
from test_model_splice import make_model
from test_packing import TOKENIZER, make_instances, num_items


@pytest.fixture(scope="module")
def model(tiny_llama_dir, tiny_clip_dir):
    return make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir)


def _run(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, num_items_in_batch=torch.tensor(num_items(batch)))
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("collator", [DataCollatorForSupervisedDataset, DataCollatorForPackedSequences])
def test_fused_path_equals_transformers_loss(model, collator):
    batch = collator(TOKENIZER)(make_instances(model.get_image_layout()))
    plain, plain_grads = _run(model, batch)
    model.fused_linear_loss = linear_cross_entropy
    try:
        fused, fused_grads = _run(model, batch)
    finally:
        del model.fused_linear_loss
    assert fused.logits is None and plain.logits is not None
    torch.testing.assert_close(fused.loss, plain.loss, rtol=0, atol=1e-5)
    assert set(fused_grads) == set(plain_grads) and "lm_head.weight" in fused_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(liger_unavailable_reason() is None, reason="liger-kernel and a GPU are present")
def test_without_liger_one_warning_and_plain_training(model, caplog):
    with caplog.at_level(logging.WARNING, logger="llava.model.fused_loss"):
        assert enable_liger_kernel(model) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--use_liger_kernel" in warnings[0].getMessage()
    assert liger_unavailable_reason() in warnings[0].getMessage()
    assert model.fused_linear_loss is None
