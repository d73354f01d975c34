"""Label masks on the real tokenizers: literal ids, replies decode exactly, prompt prefix = inference prompt."""

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conversation_template
from llava.data.preprocess import build_conversation, preprocess
from llava.mm_utils import tokenizer_image_token

PAIRS = [
    ("v1", "llama2"),
    ("v1", "mistral"),
    ("mistral_instruct", "mistral"),
    ("llava_llama_3", "llama3"),
    ("qwen_2", "qwen2"),
    ("plain", "llama2"),
    ("plain", "mistral"),
    ("plain", "llama3"),
    ("plain", "qwen2"),
]
SENTENCEPIECE = ("llama2", "mistral")


def turns(*texts, system=None):
    out = [{"from": "system", "value": system}] if system is not None else []
    return out + [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


CONVERSATIONS = {
    "unicode": turns("<image>\nGrüße? 你好", "Grüße aus Köln — 你好 🦙🐱‍👤 ok", "Et ça? ñ", "Ça va, 日本語も。"),
    "code": turns("Write code", "```python\ndef f(x):\n    return x * 2\n```\n", "Again\n", "```\n\tx\n```"),
    "spaces": turns("  lead", "  spaced out  ", " trail ", "\ttab\t"),
    "image_mid": turns("Hello", "Hi!", "Look at <image> here, and <image>.", "Two cats.", "Thanks", "Bye."),
    "empty": turns("", "", "Say nothing", "", "Now something", "Something."),
    "long": turns("<image>\nDescribe." + " more" * 300, "word " * 2000, "Shorter?", "Yes."),
    "roles_alt": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}],
    "newline_reply": turns("Q", "\nstarts with a newline", "Q2", "\n\nTwo."),
}
PLAIN_CONVERSATIONS = {
    "caption": turns("<image>\nRender a summary.", "A dog 🐶 on grass."),
    "spaces": turns("<image>", "  spaced caption  "),
    "long": turns("<image>", "long " * 1500),
    "code": turns("<image>", "`x = 1`\n"),
}


def encode(conv, tok, version):
    out = preprocess([conv], tok, has_image=True, version=version)
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def spans(ids, labels):
    """Runs of consecutive supervised positions, as id lists."""
    out, cur = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == i
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def decoded_as(tok_name, tok, ids):
    """What the tokenizer decodes; SentencePiece drops the one space the first piece starts with."""
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def training_text(conv):
    """What training tokenises (for plain and Llama-3 not quite `get_prompt()`, as in LLaVA/LLaVA-NeXT)."""
    return "".join(text for text, _ in conv.render_segments())


def expected_reply(tok_name, conv, reply):
    reply = reply.strip() if conv.format.strip else reply  # Llama-3's chat template trims messages
    text = conv.reply_prefix + reply + conv.end_of_turn
    return text[1:] if tok_name in SENTENCEPIECE and text.startswith(" ") else text


# ----------------------------------------------------------------------------- literal ids

LITERAL = {
    ("v1", "llama2"): (
        [1, 6324, 29889, 3148, 1001, 29901, 29871, -200, 29871, 13, 5618, 29973, 319, 1799, 9047, 13566, 29901,
         319, 6635, 29889, 2],
        17,
    ),
    ("mistral_instruct", "mistral"): (
        [1, 733, 16289, 28793, 2087, 18741, 4060, 13, 23809, 28723, 13, 28789, 700, 18741, 4060, 13, 13, -200,
         28705, 13, 3195, 28804, 733, 28748, 16289, 28793, 330, 5255, 28723, 28705, 2],
        26,
    ),
    ("llava_llama_3", "llama3"): (
        [128000, 128006, 9125, 128007, 271, 13347, 13, 128009, 128006, 882, 128007, 271, -200, 198, 3923, 30,
         128009, 128006, 78191, 128007, 271, 32, 8415, 13, 128009],
        21,
    ),
    ("qwen_2", "qwen2"): (
        [151644, 8948, 198, 13048, 13, 151645, 198, 151644, 872, 198, -200, 198, 3838, 30, 151645, 198, 151644,
         77091, 198, 32, 8251, 13, 151645, 198],
        19,
    ),
    ("plain", "llama2"): ([1, -200, 319, 6635, 29889, 13], 2),
}


@pytest.mark.parametrize("version, tok_name", sorted(LITERAL))
def test_literal_ids_and_labels(tokenizers, version, tok_name):
    """"<image>\\nWhat?" -> "A cat." with system "Hi."; labels are the ids from `start` on, except a
    trailing "\\n" after <|im_end|> (qwen), which is the next turn's separator."""
    tok = tokenizers(tok_name)
    conv = turns("<image>\nWhat?", "A cat.", system=None if version == "plain" else "Hi.")
    ids, labels = encode(conv, tok, version)
    expected_ids, start = LITERAL[(version, tok_name)]
    end = len(expected_ids) - (1 if version == "qwen_2" else 0)
    assert ids == expected_ids
    assert labels == [IGNORE_INDEX] * start + expected_ids[start:end] + [IGNORE_INDEX] * (len(ids) - end)


# ----------------------------------------------------------------------------- generic checks


def _cases():
    for version, tok_name in PAIRS:
        convs = PLAIN_CONVERSATIONS if version == "plain" else CONVERSATIONS
        for name in convs:
            yield pytest.param(version, tok_name, name, id=f"{version}-{tok_name}-{name}")


@pytest.mark.parametrize("version, tok_name, case", list(_cases()))
def test_replies_decode_exactly_and_prompt_prefix_matches_inference(tokenizers, version, tok_name, case):
    tok = tokenizers(tok_name)
    conv_turns = (PLAIN_CONVERSATIONS if version == "plain" else CONVERSATIONS)[case]
    ids, labels = encode(conv_turns, tok, version)
    conv = build_conversation(conv_turns, version)
    replies = [t["value"] for t in conv_turns if t["from"] in ("gpt", "assistant")]

    # acceptance 1: one supervised span per reply, decoding to exactly reply + end-of-turn marker
    got = spans(ids, labels)
    if version == "plain":
        got, replies = [sum(got, [])], ["".join(r + conv.end_of_turn for r in replies)[: -len(conv.end_of_turn)]]
    assert [decoded_as(tok_name, tok, s) for s in got] == [expected_reply(tok_name, conv, r) for r in replies]
    n_markers = sum(t["value"].count("<image>") for t in conv_turns if t["from"] == "human")
    assert ids.count(IMAGE_TOKEN_INDEX) == (n_markers if version != "plain" else training_text(conv).count("<image>"))

    # acceptance 2: tokens before the first reply == the inference prompt's tokens
    first_user = next(i for i, t in enumerate(conv_turns) if t["from"] in ("human", "user"))
    cut = build_conversation(conv_turns[: first_user + 1] + [{"from": "gpt", "value": "x"}], version)
    cut.messages[-1][1] = None
    prompt_ids = tokenizer_image_token(training_text(cut), tok)
    first_label = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert ids[:first_label] == prompt_ids

    # and the whole training sequence tokenises like the whole rendered text (stable boundaries)
    if case != "newline_reply" or tok_name in SENTENCEPIECE:
        assert ids == tokenizer_image_token(training_text(conv), tok)


def test_newline_reply_keeps_inference_split(tokenizers):
    """A reply that starts with "\\n" after ChatML's "assistant\\n": byte-level BPE would merge the two
    newlines if the whole text were tokenised at once; the prompt keeps its own "\\n" token, as at inference."""
    tok = tokenizers("qwen2")
    ids, labels = encode(CONVERSATIONS["newline_reply"], tok, "qwen_2")
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert tok.convert_ids_to_tokens(ids[first - 3 : first + 1]) == ["<|im_start|>", "assistant", "Ċ", "Ċ"]


@pytest.mark.parametrize("version, tok_name", [("llava_llama_3", "llama3"), ("qwen_2", "qwen2")])
def test_prompt_equals_tokenizer_chat_template(tokenizers, version, tok_name):
    tok = tokenizers(tok_name)
    for system, question in [("Be brief.", "What is 2+2?"), ("Tu es utile.", "Grüße 🦙 — 你好?")]:
        conv_turns = turns(question, "Four.", system=system)
        ids, labels = encode(conv_turns, tok, version)
        first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        reference = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert ids[:first] == reference
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        conv = get_conversation_template(version)
        conv.system = system
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], None)
        assert conv.get_prompt() == text


def test_batch_and_text_only_behaviour(tokenizers):
    """Several sources in one call equal one call each; has_image=False keeps '<image>' as text."""
    tok = tokenizers("llama2")
    sources = [CONVERSATIONS["unicode"], CONVERSATIONS["code"], CONVERSATIONS["image_mid"]]
    both = preprocess(sources, tok, has_image=True, version="v1")
    for i, conv in enumerate(sources):
        single = preprocess([conv], tok, has_image=True, version="v1")
        assert torch.equal(both["input_ids"][i], single["input_ids"][0])
        assert torch.equal(both["labels"][i], single["labels"][0])
    text_only = preprocess([CONVERSATIONS["image_mid"]], tok, has_image=False, version="v1")["input_ids"][0]
    assert IMAGE_TOKEN_INDEX not in text_only.tolist() and both["input_ids"][2].dtype == torch.long
