import numpy as np
import pytest

from tunesmith.data.formats import Conversation, Turn
from tunesmith.data.templates import get_template
from tunesmith.data.tokenize import IGNORE, join_segments, tokenize_rendered, tokenize_segments

CONVERSATIONS = [
    Conversation([Turn("user", "Who are you?"), Turn("assistant", "I am Tuney.", True)]),
    Conversation(
        [
            Turn("system", "Answer in one word."),
            Turn("user", "Capital of France?"),
            Turn("assistant", " Paris", True),
            Turn("user", "And of Italy?\n\n"),
            Turn("assistant", "Rome\n", True),
        ]
    ),
    Conversation([Turn("user", "你是谁？"), Turn("assistant", "我是小调，由调音团队开发。", True)]),
    Conversation(
        [
            Turn("user", "x"),
            Turn("assistant", "not learned", False),
            Turn("user", "y"),
            Turn("assistant", "learned", True),
        ]
    ),
]


def slow_labels(tokenizer, segments) -> tuple[list[int], list[int]]:
    """One conversation at a time, a plain loop: a token is trainable if it overlaps a trainable segment."""
    rendered = join_segments(segments)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        overlaps = any(start < b and a < end for a, b in rendered.spans)
        labels.append(token if overlaps else IGNORE)
    return enc["input_ids"], labels


@pytest.mark.parametrize(
    "name", ["auto", "chatml", "llama3_chat", "default", "internlm2_chat", "zephyr"]
)
def test_batched_labels_equal_one_by_one_reference(smollm_tokenizer, name):
    template = get_template(name, smollm_tokenizer)
    segments = [template.render(c, default_system="Be kind.") for c in CONVERSATIONS]
    fast = tokenize_rendered(smollm_tokenizer, [join_segments(s) for s in segments])
    for (ids, labels), segs in zip(fast, segments, strict=True):
        ref_ids, ref_labels = slow_labels(smollm_tokenizer, segs)
        assert ids.tolist() == ref_ids
        assert labels.tolist() == ref_labels


# Where every boundary between segments is a special token, tokenising segment by
# segment (XTuner's way) gives the same ids and labels as tokenising the whole text.
@pytest.mark.parametrize("name", ["auto", "chatml", "internlm2_chat"])
def test_batched_labels_equal_segment_by_segment_reference(smollm_tokenizer, name):
    template = get_template(name, smollm_tokenizer)
    segments = [template.render(c, default_system="Be kind.") for c in CONVERSATIONS]
    fast = tokenize_rendered(smollm_tokenizer, [join_segments(s) for s in segments])
    for (ids, labels), segs in zip(fast, segments, strict=True):
        ref_ids, ref_labels = tokenize_segments(smollm_tokenizer, segs)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(labels, ref_labels)


def test_end_of_turn_carries_loss_when_pad_is_eos(smollm_tokenizer):
    assert smollm_tokenizer.pad_token_id == smollm_tokenizer.eos_token_id  # the case that matters
    template = get_template("chatml", smollm_tokenizer)
    ((ids, labels),) = tokenize_rendered(
        smollm_tokenizer, [join_segments(template.render(CONVERSATIONS[0]))]
    )
    eos = smollm_tokenizer.eos_token_id
    eos_positions = np.flatnonzero(ids == eos)
    # <|im_end|> closes the user turn (no loss) and the assistant turn (loss)
    assert len(eos_positions) == 2
    assert labels[eos_positions[0]] == IGNORE
    assert labels[eos_positions[1]] == eos


def test_system_and_user_text_carry_no_loss(smollm_tokenizer):
    template = get_template("chatml", smollm_tokenizer)
    conv = CONVERSATIONS[1]
    ((ids, labels),) = tokenize_rendered(smollm_tokenizer, [join_segments(template.render(conv))])
    learned = smollm_tokenizer.decode([int(i) for i in labels if i != IGNORE])
    assert learned == " Paris<|im_end|>Rome\n<|im_end|>"
    not_learned = smollm_tokenizer.decode(
        [int(i) for i, lab in zip(ids, labels, strict=True) if lab == IGNORE]
    )
    for text in ("Answer in one word.", "Capital of France?", "And of Italy?"):
        assert text in not_learned


def test_tokenising_pieces_between_special_tokens_equals_whole_texts(smollm_tokenizer):
    from tunesmith.data.tokenize import encode_pieces, encode_whole, special_splitter

    backend = smollm_tokenizer.backend_tokenizer
    splitter = special_splitter(backend)
    assert splitter is not None
    texts = [
        "<|im_start|>system\nYou are Tuney.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
        "<|im_start|>user\n你好，世界<|im_end|><|im_end|>\n\n  spaced  <|im_start|>",
        "no special tokens at all, just text",
        "<|im_start|>system\nYou are Tuney.<|im_end|>\n<|im_start|>assistant\nliteral <|im_end|> inside",
    ]
    for whole, pieces in zip(
        encode_whole(backend, texts), encode_pieces(backend, texts, splitter), strict=True
    ):
        np.testing.assert_array_equal(whole, pieces)
