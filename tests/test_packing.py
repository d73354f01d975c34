"""Padding-free packing is exact (issue 10, acceptance 2): tiny Llama and Qwen2 LLaVA models in fp32.

The same samples, padded (DataCollatorForSupervisedDataset) and packed into
one row (DataCollatorForPackedSequences), give the same token-mean loss, the
same gradients on every trainable parameter and, per sample, the same logits;
no sample sees another. Cases: one image, two images, text only; the
pretrain stage (projector and newline train) and the finetune stage (all).
"""

from types import SimpleNamespace

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.collator import DataCollatorForPackedSequences, DataCollatorForSupervisedDataset
from llava.model import LlavaLlamaForCausalLM, LlavaQwenForCausalLM
from llava.model.attention import PACKED_SDPA
from llava.model.llava_arch import is_packed
from test_model_splice import make_model, tiles_for

M = IMAGE_TOKEN_INDEX
TOKENIZER = SimpleNamespace(pad_token_id=0)
# (input_ids, supervised from, image sizes (width, height)); the first label of sample 0 is supervised on purpose.
SAMPLES = [
    ([1, M, 5, 6, 7, 8], 0, [(150, 100)]),  # one image
    ([1, 9, M, 10, M, 11, 12, 13], 3, [(56, 56), (100, 60)]),  # two images
    ([1, 14, 15, 16, 17, 18, 19, 20, 21], 4, []),  # text only
]


def make_instances(layout, samples=SAMPLES, seed=0):
    out = []
    for k, (ids, first, sizes) in enumerate(samples):
        ids = torch.tensor(ids)
        labels = ids.clone()
        labels[:first] = IGNORE_INDEX
        labels[ids == M] = IGNORE_INDEX
        images = [tiles_for(layout, s[::-1], seed=seed + 10 * k + j) for j, s in enumerate(sizes)]
        out.append(dict(input_ids=ids, labels=labels, images=images, image_sizes=list(sizes)))
    return out


def num_items(batch):
    """The Trainer's count for a causal LM: labels[..., 1:] that are not IGNORE."""
    return int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum())


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request, tiny_llama_dir, tiny_qwen_dir, tiny_clip_dir, tiny_siglip_dir):
    if request.param == "llama":
        return make_model(LlavaLlamaForCausalLM, tiny_llama_dir, tiny_clip_dir)
    return make_model(LlavaQwenForCausalLM, tiny_qwen_dir, tiny_siglip_dir)


def _loss_and_grads(model, batch, n_items):
    model.zero_grad(set_to_none=True)
    loss = model(**batch, num_items_in_batch=torch.tensor(n_items)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage, attn", [("pretrain", "sdpa"), ("finetune", "sdpa"), ("finetune", "eager"),
                                         ("pretrain", PACKED_SDPA), ("finetune", PACKED_SDPA)])
def test_packed_loss_and_grads_equal_padded(model, stage, attn):
    model.set_attn_implementation(attn)
    inner = model.get_model()
    model.requires_grad_(stage == "finetune")
    inner.mm_projector.requires_grad_(True)
    if getattr(inner, "image_newline", None) is not None:
        inner.image_newline.requires_grad_(True)
    instances = make_instances(model.get_image_layout())
    padded = DataCollatorForSupervisedDataset(TOKENIZER)(instances)
    packed = DataCollatorForPackedSequences(TOKENIZER)(instances)
    assert num_items(packed) == num_items(padded) == 4 + 4 + 5  # sample 0's label at position 0 is never a target
    loss_pad, grads_pad = _loss_and_grads(model, padded, num_items(padded))
    loss_pack, grads_pack = _loss_and_grads(model, packed, num_items(packed))
    torch.testing.assert_close(loss_pack, loss_pad, rtol=0, atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads_pad) == set(grads_pack) and set(grads_pad) <= trainable
    assert inner.mm_projector[0].weight.requires_grad and any("mm_projector" in n for n in grads_pad)
    if stage == "finetune":
        assert "lm_head.weight" in grads_pad
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.set_attn_implementation("sdpa")


def _sample_spans(model, batch):
    """Post-splice (start, end) of each packed sample, from the spliced position_ids."""
    _, positions, mask, *_ = model.prepare_inputs_labels_for_multimodal(
        batch["input_ids"], batch["position_ids"], None, None, None, batch["images"], batch["image_sizes"])
    assert mask is None
    starts = (positions[0] == 0).nonzero().squeeze(1).tolist() + [positions.shape[1]]
    return list(zip(starts[:-1], starts[1:]))


@torch.no_grad()
@pytest.mark.parametrize("attn", ["sdpa", PACKED_SDPA])
def test_packed_logits_equal_padded_rows_and_samples_are_isolated(model, attn):
    model.set_attn_implementation(attn)
    layout = model.get_image_layout()
    instances = make_instances(layout)
    padded = DataCollatorForSupervisedDataset(TOKENIZER)(instances)
    packed = DataCollatorForPackedSequences(TOKENIZER)(instances)
    assert is_packed(packed["position_ids"], None) and "attention_mask" not in packed
    logits_pad = model(**padded).logits
    _, _, row_mask, *_ = model.prepare_inputs_labels_for_multimodal(
        padded["input_ids"], None, padded["attention_mask"], None, None, padded["images"], padded["image_sizes"])
    logits_pack = model(**packed).logits
    spans = _sample_spans(model, packed)
    assert len(spans) == 3
    for b, (start, end) in enumerate(spans):
        torch.testing.assert_close(logits_pack[0, start:end], logits_pad[b][row_mask[b].bool()], rtol=1e-4, atol=1e-5)

    changed = [dict(x) for x in instances]
    changed[1] = dict(changed[1], input_ids=changed[1]["input_ids"].clone())
    changed[1]["input_ids"][-1] = 30  # the middle sample's last token
    logits_changed = model(**DataCollatorForPackedSequences(TOKENIZER)(changed)).logits
    for b, (start, end) in enumerate(spans):
        same = torch.equal(logits_changed[0, start:end], logits_pack[0, start:end])
        assert same == (b != 1), b  # the others bit-identical; the changed sample's own logits differ
    model.set_attn_implementation("sdpa")


def test_packed_labels_ignore_each_sample_start():
    instances = make_instances(SimpleNamespace(num_tiles=lambda hw: 1), samples=[([1, 5, 6], 0, []), ([2, 7], 0, [])])
    batch = DataCollatorForPackedSequences(TOKENIZER)(instances)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7]]  # 6 never learns to predict 2


@torch.no_grad()
def test_packed_sdpa_without_cu_seqlens_reads_position_ids(model):
    """The inner LLM called directly with packed position_ids (no cu_seq_lens) still keeps samples apart."""
    model.set_attn_implementation(PACKED_SDPA)
    try:
        ids = torch.tensor([[1, 5, 6, 7, 1, 8, 9]])
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
        packed = model.get_model()(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        first = model.get_model()(input_ids=ids[:, :4], use_cache=False).last_hidden_state
        second = model.get_model()(input_ids=ids[:, 4:], use_cache=False).last_hidden_state
        torch.testing.assert_close(packed, torch.cat([first, second], dim=1), rtol=1e-5, atol=1e-6)
    finally:
        model.set_attn_implementation("sdpa")
