import pytest
import torch

from tunesmith.errors import UserError
from tunesmith.infer.engine import Engine, GenerationStats, _cut_at_stop_words

MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]
GREEDY = {"temperature": 0, "max_new_tokens": 12}


def test_greedy_generation_is_deterministic(tiny_engine):
    first = tiny_engine.generate(MESSAGES, **GREEDY)
    assert first
    assert tiny_engine.generate(MESSAGES, **GREEDY) == first


def test_stream_pieces_join_to_the_generated_answer(tiny_engine):
    pieces = list(tiny_engine.stream(MESSAGES, **GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == tiny_engine.generate(MESSAGES, **GREEDY)


def test_seed_makes_sampling_reproducible(tiny_engine):
    sampling = {"temperature": 1.5, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16}
    a = tiny_engine.generate(MESSAGES, seed=1, **sampling)
    assert tiny_engine.generate(MESSAGES, seed=1, **sampling) == a
    others = {tiny_engine.generate(MESSAGES, seed=s, **sampling) for s in (2, 3, 4)}
    assert others != {a}


def test_max_new_tokens_limits_the_answer_and_reports_length(tiny_engine):
    stats = GenerationStats()
    text = "".join(tiny_engine.stream(MESSAGES, stats=stats, temperature=0, max_new_tokens=5))
    assert stats.completion_tokens == 5
    assert stats.finish_reason == "length"
    assert stats.text == text
    assert stats.prompt_tokens == tiny_engine.count_tokens(tiny_engine.prompt(MESSAGES))


def test_stop_word_ends_the_answer_and_is_not_shown(tiny_engine):
    full = tiny_engine.generate(MESSAGES, temperature=0, max_new_tokens=30)
    assert len(full) > 12
    stop = full[6:10]
    cut = tiny_engine.generate(MESSAGES, temperature=0, max_new_tokens=30, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_eos_token_ends_generation_with_reason_stop(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 10.0
    model.lm_head = head  # a model that always says end-of-turn
    stats = GenerationStats()
    text = "".join(Engine(model, tokenizer).stream(MESSAGES, stats=stats, **GREEDY))
    assert text == ""
    assert stats.completion_tokens == 1
    assert stats.finish_reason == "stop"


def test_system_prompt_is_rendered_unless_messages_have_one(tiny_engine):
    engine = Engine(tiny_engine.model, tiny_engine.tokenizer, system="You are Ada.")
    assert "You are Ada." in engine.prompt(MESSAGES)
    own = [{"role": "system", "content": "You are Bob."}, *MESSAGES]
    prompt = engine.prompt(own)
    assert "You are Bob." in prompt and "You are Ada." not in prompt
    assert prompt.rstrip().endswith("assistant")


def test_tokenizer_without_chat_template_needs_a_named_template(tiny_engine):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_engine.tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="prompt-template"):
        Engine(tiny_engine.model, tokenizer)


def test_negative_max_new_tokens_is_a_user_error(tiny_engine):
    with pytest.raises(UserError, match="max_new_tokens"):
        tiny_engine.generate(MESSAGES, max_new_tokens=-1)


@pytest.mark.parametrize(
    "pieces,expected",
    [
        (["Hello wor", "ld<|e", "nd|> more"], "Hello world"),
        (["a<", "b", "<|end|>"], "a<b"),
        (["no stop ", "here <|", "e"], "no stop here <|e"),
    ],
)
def test_stop_word_split_across_pieces_is_cut(pieces, expected):
    assert "".join(_cut_at_stop_words(iter(pieces), ["<|end|>"])) == expected


def test_eos_ids_include_end_of_turn(tiny_engine):
    assert tiny_engine.tokenizer.convert_tokens_to_ids("<|im_end|>") in tiny_engine.eos_token_ids


def test_load_with_adapter_uses_its_weights_and_its_tokenizer_template(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "TRAINED-TEMPLATE " + tokenizer.chat_template
    tokenizer.save_pretrained(tmp_path / "adapter")

    engine = Engine.load(str(tiny_model_dir), adapter=str(tmp_path / "adapter"), device="cpu")
    assert engine.prompt(MESSAGES).startswith("TRAINED-TEMPLATE ")
    in_memory = Engine(model, tokenizer)
    assert engine.generate(MESSAGES, **GREEDY) == in_memory.generate(MESSAGES, **GREEDY)
    base = Engine.load(str(tiny_model_dir), device="cpu")
    assert engine.generate(MESSAGES, **GREEDY) != base.generate(MESSAGES, **GREEDY)


def test_adapter_dir_without_adapter_config_is_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="adapter_config.json"):
        Engine.load(str(tiny_model_dir), adapter=str(tmp_path))


def test_four_bit_loading_generates(tiny_model_dir):
    """--bits 4 loads the decoder linears as bitsandbytes NF4 (runs on CPU too)."""
    import bitsandbytes as bnb

    engine = Engine.load(str(tiny_model_dir), bits=4, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
    stats = GenerationStats()
    text = "".join(engine.stream(MESSAGES, stats=stats, **GREEDY))
    assert stats.completion_tokens > 0 and isinstance(text, str)


def test_cancel_criterion_answers_on_the_inputs_device():
    """generate() ORs it with its own flags on the model's device (a CPU answer broke CUDA)."""
    import threading

    from tunesmith.infer.engine import _Cancelled

    event = threading.Event()
    ids = torch.zeros((2, 3), dtype=torch.long, device="meta")
    assert _Cancelled(event)(ids, None).device.type == "meta"
    event.set()
    assert _Cancelled(event)(torch.zeros((2, 3), dtype=torch.long), None).tolist() == [True, True]


def test_one_token_stop_word_stops_generation_at_that_token(tiny_engine):
    tokenizer = tiny_engine.tokenizer
    prompt = tokenizer(tiny_engine.prompt(MESSAGES), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = tiny_engine.model.generate(**prompt, max_new_tokens=20, do_sample=False)
    new = ids[0, prompt["input_ids"].shape[1] :].tolist()
    k = next(
        i
        for i in range(3, len(new))
        if tokenizer.decode([new[i]]).strip()
        and tokenizer.decode([new[i]]) not in tokenizer.decode(new[:i])
    )
    word = tokenizer.decode([new[k]])
    stats = GenerationStats()
    text = "".join(
        tiny_engine.stream(MESSAGES, stats=stats, temperature=0, max_new_tokens=20, stop=[word])
    )
    assert text == tokenizer.decode(new[:k])
    assert stats.completion_tokens == k + 1  # generation itself stopped there
    assert stats.finish_reason == "stop"
