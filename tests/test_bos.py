"""One BOS, never two: a real Meta-Llama-3 tokenizer adds `<|begin_of_text|>` itself.

The vendored llama3 tokenizer adds none, so this test gives it the
post-processor the released Meta-Llama-3 tokenizer.json has, then checks that
prompts which already spell out the BOS (the `llava_llama_3` template) keep one.
"""

import json

import pytest
from transformers import AutoTokenizer

from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.demo.tiny import vendored_tokenizer_dir
from llava.train.train import preprocess

BOS = 128000


@pytest.fixture(scope="module")
def bos_adding_llama3(tmp_path_factory):
    src = vendored_tokenizer_dir("llama3")
    dst = tmp_path_factory.mktemp("llama3_bos")
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS], "tokens": ["<|begin_of_text|>"]}},
    }
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    (dst / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(dst)
    assert tok("Hi").input_ids[0] == BOS  # the fixture really adds a BOS
    return tok


def test_prompt_spelling_bos_gets_no_second_one(bos_adding_llama3):
    conv = conv_templates["llava_llama_3"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is it?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), bos_adding_llama3)
    assert ids[0] == BOS and ids.count(BOS) == 1


def test_plain_prompt_still_gets_bos(bos_adding_llama3):
    assert tokenizer_image_token("Hi <image>", bos_adding_llama3)[:1] == [BOS]


@pytest.mark.parametrize("version", ["llava_llama_3", "plain"])
def test_training_ids_have_one_bos(bos_adding_llama3, version):
    source = [[{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]]
    ids = preprocess(source, bos_adding_llama3, has_image=True, version=version)["input_ids"][0].tolist()
    assert ids[0] == BOS and ids.count(BOS) == 1


def test_bos_answer_follows_add_bos_token(tokenizers):
    tok = tokenizers("llama2").__class__.from_pretrained(tokenizers("llama2").name_or_path)  # a copy to modify
    assert tokenizer_image_token("Hi", tok)[0] == tok.bos_token_id
    tok.add_bos_token = False  # the memoised answer must not go stale
    assert tok("Hi").input_ids[0] != tok.bos_token_id
    assert tok.bos_token_id not in tokenizer_image_token("Hi", tok)
