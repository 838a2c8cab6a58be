"""The one generation core: batches, streams, stop words, the KV cache, cancellation."""

import functools
import gc
import threading
import time

import pytest
import torch

from tunesmith.errors import UserError
from tunesmith.model.generate import (
    Answer,
    Generator,
    Sampling,
    SamplingError,
    _partial_stop_len,
    _Rows,
    _StopRows,
)

MESSAGES = [{"role": "user", "content": "Hello, who are you?"}]
GREEDY = Sampling.greedy(12)
QUESTIONS = [
    "Hi",
    "What is the capital of France and why is it that one?",
    "2+2?",
    "Tell me a joke",
]


def test_greedy_generation_is_deterministic(tiny_generator):
    first = tiny_generator.generate(MESSAGES, GREEDY)
    assert first
    assert tiny_generator.generate(MESSAGES, GREEDY) == first


def test_stream_pieces_join_to_the_batched_answer(tiny_generator):
    pieces = list(tiny_generator.stream(MESSAGES, GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == tiny_generator.answer(MESSAGES, GREEDY).text


def test_left_padded_batch_answers_equal_one_by_one_answers(tiny_generator):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    batch = tiny_generator.answer_batch(conversations, Sampling.greedy(10), batch_size=3)
    alone = [tiny_generator.answer(c, Sampling.greedy(10)) for c in conversations]
    assert [a.text for a in batch] == [a.text for a in alone]
    assert [a.prompt_tokens for a in batch] == [
        len(tiny_generator.prompt_ids(c)) for c in conversations
    ]


def test_batched_answer_logprobs_equal_one_by_one_scores(tiny_generator):
    answers = ["Hello there.", "Paris, because it is the capital.", "4", ""]
    batched = tiny_generator.answer_logprobs(QUESTIONS, answers, batch_size=3)
    alone = [
        tiny_generator.answer_logprobs([q], [a])[0] for q, a in zip(QUESTIONS, answers, strict=True)
    ]
    assert [n for _, n in batched] == [n for _, n in alone]
    assert batched[-1] == (0.0, 0)
    assert batched[1][1] > batched[0][1] > 0
    for (got, _), (want, _) in zip(batched, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    # the score is the answer's log-likelihood: its tokens, scored after the prompt
    prefix = tiny_generator.prompt_ids([{"role": "user", "content": QUESTIONS[0]}])
    target = tiny_generator.tokenizer(answers[0], add_special_tokens=False)["input_ids"]
    logits = tiny_generator.model(input_ids=torch.tensor([prefix + target])).logits[0]
    logp = torch.log_softmax(logits[len(prefix) - 1 : -1].float(), dim=-1)
    want = float(logp[torch.arange(len(target)), torch.tensor(target)].sum())
    assert batched[0][0] == pytest.approx(want, abs=1e-3)


def test_seed_makes_sampling_reproducible(tiny_generator):
    def sample(seed):
        sampling = Sampling(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=16, seed=seed)
        return tiny_generator.generate(MESSAGES, sampling)

    a = sample(1)
    assert sample(1) == a
    assert {sample(s) for s in (2, 3, 4)} != {a}


def test_max_new_tokens_limits_the_answer_and_reports_length(tiny_generator):
    answer = Answer()
    text = "".join(tiny_generator.stream(MESSAGES, Sampling.greedy(5), answer=answer))
    assert answer.completion_tokens == 5
    assert answer.finish_reason == "length"
    assert answer.text == text
    assert answer.prompt_tokens == tiny_generator.count_tokens(tiny_generator.prompt(MESSAGES))


def test_stop_word_ends_the_answer_and_is_not_shown(tiny_generator):
    full = tiny_generator.generate(MESSAGES, Sampling.greedy(30))
    assert len(full) > 12
    stop = full[6:10]
    cut = Sampling(temperature=0, max_new_tokens=30, stop=(stop,))
    assert tiny_generator.generate(MESSAGES, cut) == full[: full.index(stop)]
    (batched,) = tiny_generator.answer_batch([MESSAGES], cut)
    assert batched.text == full[: full.index(stop)] and batched.finish_reason == "stop"


def _always_ends_turn(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 10.0
    model.lm_head = head
    return model, tokenizer


def test_eos_token_ends_generation_with_reason_stop(tiny_model_dir):
    generator = Generator(*_always_ends_turn(tiny_model_dir))
    answer = Answer()
    assert "".join(generator.stream(MESSAGES, GREEDY, answer=answer)) == ""
    assert (answer.completion_tokens, answer.finish_reason) == (1, "stop")
    (batched,) = generator.answer_batch([MESSAGES], GREEDY)
    assert (batched.text, batched.completion_tokens, batched.finish_reason) == ("", 1, "stop")


def test_system_prompt_is_rendered_unless_messages_have_one(tiny_generator):
    generator = Generator(tiny_generator.model, tiny_generator.tokenizer, system="You are Ada.")
    assert "You are Ada." in generator.prompt(MESSAGES)
    own = [{"role": "system", "content": "You are Bob."}, *MESSAGES]
    prompt = generator.prompt(own)
    assert "You are Bob." in prompt and "You are Ada." not in prompt
    assert prompt.rstrip().endswith("assistant")


def test_tokenizer_without_chat_template_needs_a_named_template(tiny_generator):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_generator.tokenizer.name_or_path)
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="prompt-template"):
        Generator(tiny_generator.model, tokenizer)


@pytest.mark.parametrize(
    "values,param",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 5e-324}, "repetition_penalty"),
        ({"seed": 2**70}, "seed"),
        ({"stop": ("",)}, "stop"),
        ({"stop": tuple("abcdefghijklmnopq")}, "stop"),
    ],
)
def test_bad_sampling_values_name_their_param(values, param):
    with pytest.raises(SamplingError) as caught:
        Sampling(**values)
    assert caught.value.param == param and isinstance(caught.value, UserError)


def test_tiny_temperature_decodes_greedily_instead_of_nan(tiny_generator):
    tiny = tiny_generator.generate(MESSAGES, Sampling(temperature=1e-300, max_new_tokens=8))
    assert tiny == tiny_generator.generate(MESSAGES, Sampling.greedy(8))


def test_prompt_plus_max_new_tokens_longer_than_the_context_is_refused(tiny_generator):
    too_many = Sampling.greedy(tiny_generator.context_length)
    with pytest.raises(SamplingError) as caught:
        tiny_generator.submit(MESSAGES, too_many)
    assert caught.value.param == "max_new_tokens"
    with pytest.raises(SamplingError, match="context"):
        tiny_generator.answer_batch([MESSAGES], too_many)


@pytest.mark.parametrize(
    "pieces,expected",
    [
        (["Hello wor", "ld<|e", "nd|> more"], "Hello world"),
        (["a<", "b", "<|end|>"], "a<b"),
    ],
)
def test_stop_word_split_across_pieces_is_held_back_and_cut(pieces, expected):
    """Pieces are fed as if each were one token's text."""
    shown = []
    rows = _Rows(None, 1, [], ["<|end|>"], 100, shown.append)
    row = rows.rows[0]
    for piece in pieces:
        row.text += piece
        cut = row.text.find("<|end|>")
        if cut >= 0:
            row.text = row.text[:cut]
            rows._show(row, cut)
            break
        rows._show(row, len(row.text) - _partial_stop_len(row.text, "<|end|>"))
    assert "".join(shown) == expected


def test_turn_end_ids_include_end_of_turn(tiny_generator):
    assert tiny_generator.tokenizer.convert_tokens_to_ids("<|im_end|>") in (
        tiny_generator.eos_token_ids
    )


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

    loaded = Generator.load(str(tiny_model_dir), adapter=str(tmp_path / "adapter"), device="cpu")
    assert loaded.prompt(MESSAGES).startswith("TRAINED-TEMPLATE ")
    in_memory = Generator(model.eval(), tokenizer)
    assert loaded.generate(MESSAGES, GREEDY) == in_memory.generate(MESSAGES, GREEDY)
    base = Generator.load(str(tiny_model_dir), device="cpu")
    assert loaded.generate(MESSAGES, GREEDY) != base.generate(MESSAGES, GREEDY)


def test_adapter_dir_without_adapter_config_is_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="adapter_config.json"):
        Generator.load(str(tiny_model_dir), adapter=str(tmp_path))


def test_four_bit_loading_generates(tiny_model_dir):
    """--bits 4 loads the decoder linears as bitsandbytes NF4 (runs on CPU too)."""
    import bitsandbytes as bnb

    generator = Generator.load(str(tiny_model_dir), bits=4, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in generator.model.modules())
    assert generator.answer(MESSAGES, GREEDY).completion_tokens > 0


def test_stop_criterion_answers_on_the_inputs_device():
    """generate() ORs it with its own flags on the model's device (a CPU answer broke CUDA)."""
    cancel = threading.Event()
    rows = _Rows(None, 2, [], [], 10, None)
    ids = torch.zeros((2, 3), dtype=torch.long, device="meta")
    assert _StopRows(rows, cancel)(ids, None).device.type == "meta"
    rows.rows[1].done = True
    assert _StopRows(rows, cancel)(torch.zeros((2, 3)), None).tolist() == [False, True]
    cancel.set()
    assert _StopRows(rows, cancel)(torch.zeros((2, 3)), None).tolist() == [True, True]


def test_one_token_stop_word_stops_generation_at_that_token(tiny_generator):
    full = tiny_generator.model.generate(
        **tiny_generator.tokenizer(tiny_generator.prompt(MESSAGES), return_tensors="pt"),
        max_new_tokens=20,
        do_sample=False,
    )
    new = full[0, len(tiny_generator.prompt_ids(MESSAGES)) :].tolist()
    decode = tiny_generator.tokenizer.decode
    k = next(
        i
        for i in range(3, len(new))
        if decode([new[i]]).strip() and decode([new[i]]) not in decode(new[:i])
    )
    answer = Answer()
    sampling = Sampling(temperature=0, max_new_tokens=20, stop=(decode([new[k]]),))
    text = "".join(tiny_generator.stream(MESSAGES, sampling, answer=answer))
    assert text == decode(new[:k])
    assert answer.completion_tokens == k + 1  # generation itself stopped there
    assert answer.finish_reason == "stop"


def test_generation_uses_the_kv_cache_after_training_with_checkpointing(tiny_model_dir):
    """The recipe sets config.use_cache=False and turns on gradient checkpointing; chat
    samples in between must still decode one new token per forward (with the cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    model(**tokenizer("a training step", return_tensors="pt")).logits.sum().backward()
    model.eval()
    widths = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        answer = Generator(model, tokenizer).answer(MESSAGES, Sampling.greedy(6))
    finally:
        hook.remove()
    assert answer.completion_tokens == 6
    assert widths[0] > 1 and widths[1:] == [1] * (len(widths) - 1)


def _slow_generator(tiny_generator, seconds_per_token=0.02):
    """The tiny model, slowed down so that a long answer takes seconds."""
    generator = Generator(tiny_generator.model, tiny_generator.tokenizer, max_queue=4)
    slow = generator.model.model.register_forward_hook(lambda *args: time.sleep(seconds_per_token))
    return generator, slow


def test_cancel_stops_a_stream_within_a_few_tokens(tiny_generator):
    generator, slow = _slow_generator(tiny_generator)
    try:
        handle = generator.submit(MESSAGES, Sampling(temperature=1, max_new_tokens=500))
        pieces = iter(handle)
        next(pieces)
        handle.cancel()
        rest = list(pieces)
        assert handle.answer.finish_reason == "cancelled"
        assert handle.answer.completion_tokens < 10 and len(rest) < 10
    finally:
        slow.remove()


def test_abandoned_stream_frees_the_model_at_once(tiny_generator):
    """A consumer that drops a stream (closed tab, client gone) holds no lock: the next
    answer comes in its normal time, not after the abandoned one's 500 tokens."""
    generator, slow = _slow_generator(tiny_generator)
    try:
        start = time.perf_counter()
        generator.answer(MESSAGES, Sampling.greedy(3))
        normal = time.perf_counter() - start
        stream = generator.stream(MESSAGES, Sampling(temperature=1, max_new_tokens=500))
        next(stream)
        del stream
        gc.collect()
        start = time.perf_counter()
        assert generator.generate(MESSAGES, Sampling.greedy(3))
        assert time.perf_counter() - start < normal + 1.0  # 500 tokens would take 10 s
    finally:
        slow.remove()


def test_ctrl_c_while_waiting_for_a_piece_cancels_the_generation(tiny_generator):
    generator, slow = _slow_generator(tiny_generator)
    try:
        stream = generator.stream(MESSAGES, Sampling(temperature=1, max_new_tokens=500))
        next(stream)
        with pytest.raises(KeyboardInterrupt):
            stream.throw(KeyboardInterrupt)
        deadline = time.time() + 2
        while generator.queued and time.time() < deadline:
            time.sleep(0.01)
        assert generator.queued == 0
    finally:
        slow.remove()


def test_full_queue_is_refused_and_cancel_all_empties_it(tiny_generator):
    from tunesmith.model.generate import GeneratorBusy

    generator, slow = _slow_generator(tiny_generator)
    try:
        long = Sampling(temperature=1, max_new_tokens=500)
        handles = [generator.submit(MESSAGES, long) for _ in range(4)]
        with pytest.raises(GeneratorBusy):
            generator.submit(MESSAGES, long)
        generator.cancel_all()
        for handle in handles:
            assert handle.done.wait(5)
            assert handle.answer.finish_reason == "cancelled"
        assert generator.queued == 0
    finally:
        slow.remove()


def _sampled_batch_sizes(generator, monkeypatch) -> list[int]:
    """Rows of every forward pass of `generator.model`, recorded while a test runs."""
    sizes: list[int] = []
    forward = generator.model.forward

    @functools.wraps(forward)  # the same signature: the cache keyword is read from it
    def recording(*args, **kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(generator.model, "forward", recording)
    return sizes


def test_greedy_batch_gives_the_answers_of_the_plain_batch(tiny_generator):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    limits = [3, 12, 7, 12]
    rows = [tiny_generator.prompt_ids(c) for c in conversations]
    fast = tiny_generator.greedy_batch(rows, limits, batch_size=3)
    plain = [
        tiny_generator.answer(c, Sampling.greedy(n))
        for c, n in zip(conversations, limits, strict=True)
    ]
    assert [(a.text, a.finish_reason) for a in fast] == [(a.text, a.finish_reason) for a in plain]
    assert [a.completion_tokens for a in fast] == [a.completion_tokens for a in plain]
    assert [a.prompt_tokens for a in fast] == [len(r) for r in rows]
    assert all(a.completion_tokens <= n for a, n in zip(fast, limits, strict=True))


def test_greedy_batch_runs_the_shared_prefix_once_and_drops_finished_rows(
    tiny_generator, monkeypatch
):
    system = [{"role": "system", "content": "You are Ada, an AI assistant by Tunesmith Lab."}]
    rows = [tiny_generator.prompt_ids([*system, {"role": "user", "content": q}]) for q in QUESTIONS]
    sizes = _sampled_batch_sizes(tiny_generator, monkeypatch)
    answers = tiny_generator.greedy_batch(rows, [2, 9, 5, 9])
    assert sizes[0] == 1  # the system turn, once for all rows
    assert sizes[1] == len(rows)
    # a row whose limit is reached leaves the batch: 4 rows, then 3, then 2
    assert sizes[2:] == [4] + [3] * 3 + [2] * 4
    assert [a.completion_tokens for a in answers] == [2, 9, 5, 9]


def test_greedy_answers_asked_together_are_not_generated_again(tiny_generator, monkeypatch):
    prompts = ["Hi", "2+2?", "Tell me a joke"]
    first = tiny_generator.greedy_answers(prompts, max_new_tokens=[4, 6, 8])
    sizes = _sampled_batch_sizes(tiny_generator, monkeypatch)
    again = tiny_generator.greedy_answers(["2+2?"], max_new_tokens=6)
    assert sizes == []
    assert again[0].text == first[1].text
    with pytest.raises(ValueError, match="3 prompts but 2"):
        tiny_generator.greedy_answers(prompts, max_new_tokens=[4, 6])


def test_threads_follow_what_the_cores_do_now_not_the_load_average(monkeypatch):
    # a benchmark's previous run keeps the 1-minute load average above 1 for minutes after
    # the machine went idle: the thread choice reads the cores' use now
    from tunesmith.model import generate

    monkeypatch.setattr(generate.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(generate.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(generate.torch.cuda, "is_available", lambda: False)
    chosen = []
    monkeypatch.setattr(generate.torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(generate, "busy_cores", lambda: 0.1)
    generate.fit_threads_to_load()
    assert chosen == []  # idle now: torch's default kept
    monkeypatch.setattr(generate, "busy_cores", lambda: 1.6)
    generate.fit_threads_to_load()
    assert chosen == [1]
    monkeypatch.setattr(generate, "busy_cores", lambda: None)  # no /proc/stat: load average
    generate.fit_threads_to_load()
    assert chosen == [1, 1]


def test_busy_cores_reads_the_time_spent_outside_idle(tmp_path, monkeypatch):
    from tunesmith.model import generate

    stat = tmp_path / "stat"
    # user nice system idle iowait ...: 300 of 400 ticks busy between the samples
    samples = iter(["cpu 100 0 100 800 0 0 0\n", "cpu 300 0 200 880 20 0 0\n"])
    stat.write_text(next(samples))
    monkeypatch.setattr(generate.time, "sleep", lambda s: stat.write_text(next(samples)))
    monkeypatch.setattr(generate.os, "cpu_count", lambda: 2)
    assert generate.busy_cores(stat=str(stat)) == pytest.approx(2 * 300 / 400)
    assert generate.busy_cores(stat=str(tmp_path / "missing")) is None


def test_generation_runs_without_cudnn_attention(tiny_generator, monkeypatch):
    """cuDNN's SDPA builds a plan for every new shape, i.e. every decoded token: the first
    evals of a process ran 5x slower on an H200. Every path of the generation core (the
    greedy batch, transformers' generate, scoring) runs with it off, and leaves it as it was."""
    model = tiny_generator.model
    seen = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    tiny_generator.greedy_batch([tiny_generator.prompt_ids(MESSAGES)], [4])
    tiny_generator.answer(MESSAGES, Sampling.greedy(4))
    tiny_generator.answer_logprobs(["Hi"], ["Hello"])
    assert len(seen) >= 3 and not any(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
