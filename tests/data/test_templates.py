"""Each named template renders what the model family's own chat template renders."""

import pytest

from tunesmith.data.formats import Conversation, Turn
from tunesmith.data.templates import TEMPLATE_NAMES, get_template
from tunesmith.errors import UserError

# Reference chat templates, as published in each family's tokenizer_config.json
# (Qwen2.5-Instruct without its tool-calling branch; Meta-Llama-3-Instruct; InternLM2/2.5-chat;
# zephyr-7b-beta).
QWEN2_5 = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
INTERNLM2 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

WITH_SYSTEM = Conversation(
    [
        Turn("system", "You are Tuney."),
        Turn("user", "Who are you?"),
        Turn("assistant", "I am Tuney, made by the tunesmith team.", True),
    ]
)
MULTI_TURN = Conversation(
    [
        Turn("user", "Hi!\nHow are you?"),
        Turn("assistant", "Fine, thanks.", True),
        Turn("user", "What is 2+2?"),
        Turn("assistant", "4", True),
    ]
)

ZEPHYR = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)

# name -> (reference template, its special tokens, the family's implicit system prompt)
FAMILIES = {
    "chatml": (None, {}, SMOLLM_DEFAULT_SYSTEM),  # None: the SmolLM2 tokenizer's own template
    "qwen_chat": (QWEN2_5, {}, QWEN_DEFAULT_SYSTEM),
    "llama3_chat": (LLAMA3, {"bos_token": "<|begin_of_text|>"}, None),
    "internlm2_chat": (INTERNLM2, {"bos_token": "<s>"}, None),
    "zephyr": (ZEPHYR, {"eos_token": "</s>"}, None),
}


def reference(tokenizer, name, messages, generation=False):
    template, special, _ = FAMILIES[name]
    return tokenizer.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=generation,
        chat_template=template,
        **special,
    )


def text(segments) -> str:
    return "".join(s.text for s in segments)


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("conv", [WITH_SYSTEM, MULTI_TURN], ids=["system", "multi-turn"])
def test_named_template_matches_family_chat_template(smollm_tokenizer, name, conv):
    template = get_template(name, smollm_tokenizer)
    implicit_system = FAMILIES[name][2]
    assert text(template.render(conv, default_system=implicit_system)) == reference(
        smollm_tokenizer, name, conv.messages()
    )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_render_prompt_matches_generation_prompt(smollm_tokenizer, name):
    template = get_template(name, smollm_tokenizer)
    messages = MULTI_TURN.messages()[:-1]
    assert template.render_prompt(messages, system=FAMILIES[name][2]) == reference(
        smollm_tokenizer, name, messages, generation=True
    )


@pytest.mark.parametrize("name", [n for n in TEMPLATE_NAMES])
@pytest.mark.parametrize("system", [None, "Be brief."])
def test_to_jinja_renders_what_training_rendered(smollm_tokenizer, name, system):
    template = get_template(name, smollm_tokenizer)
    jinja = template.to_jinja(default_system=system)
    for conv in (WITH_SYSTEM, MULTI_TURN):
        rendered = smollm_tokenizer.apply_chat_template(
            conv.messages(), tokenize=False, chat_template=jinja
        )
        assert rendered == text(template.render(conv, default_system=system))
    prompt = smollm_tokenizer.apply_chat_template(
        MULTI_TURN.messages()[:1], tokenize=False, add_generation_prompt=True, chat_template=jinja
    )
    assert prompt == template.render_prompt(MULTI_TURN.messages()[:1], system=system)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_only_assistant_content_and_end_of_turn_are_trainable(smollm_tokenizer, name):
    template = get_template(name, smollm_tokenizer)
    trainable = [s.text for s in template.render(MULTI_TURN) if s.trainable]
    end = template.stop_words[0]
    assert trainable == [f"Fine, thanks.{end}", f"4{end}"]


def test_auto_inserts_the_tokenizers_default_system(smollm_tokenizer):
    auto = get_template("auto", smollm_tokenizer)
    assert SMOLLM_DEFAULT_SYSTEM in text(auto.render(MULTI_TURN))
    rendered = text(auto.render(MULTI_TURN, default_system="You are Tuney."))
    assert "SmolLM" not in rendered
    assert rendered.startswith("<|im_start|>system\nYou are Tuney.<|im_end|>\n")


def test_auto_fast_path_equals_incremental_rendering(smollm_tokenizer):
    auto = get_template("auto", smollm_tokenizer)
    for conv in (WITH_SYSTEM, MULTI_TURN):
        fast = auto.render(conv)
        slow = auto._render_slow(conv.messages(), [t.trainable for t in conv.turns], "test")
        assert fast == slow


def test_auto_with_a_trimming_template_masks_correctly(smollm_tokenizer):
    # Llama 3's template strips contents, so the fill-in fast path must not be used.
    tokenizer = smollm_tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = LLAMA3
    try:
        auto = get_template("auto", tokenizer)
        conv = Conversation([Turn("user", "  hi  "), Turn("assistant", " hello \n", True)])
        segments = auto.render(conv)
    finally:
        tokenizer.chat_template = saved
    assert text(segments) == tokenizer.apply_chat_template(
        conv.messages(), tokenize=False, chat_template=LLAMA3
    )
    assert [s.text for s in segments if s.trainable] == ["hello<|eot_id|>"]


def test_unknown_template_is_a_user_error(smollm_tokenizer):
    with pytest.raises(UserError, match="unknown template 'chatgpt'.*chatml"):
        get_template("chatgpt", smollm_tokenizer)


def test_auto_with_a_broken_chat_template_is_a_user_error(smollm_tokenizer):
    saved = smollm_tokenizer.chat_template
    smollm_tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }"
    try:
        with pytest.raises(UserError, match="does not parse"):
            get_template("auto", smollm_tokenizer)
    finally:
        smollm_tokenizer.chat_template = saved
