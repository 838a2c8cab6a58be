"""The browser chat (streamlit), started by `tunesmith webui MODEL [--adapter DIR]`.

Run directly with: streamlit run webui_app.py -- --model MODEL [--adapter DIR]
The model is loaded once per process (st.cache_resource) and shared by all sessions.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing

import streamlit as st

from tunesmith.infer.chat import load_generator
from tunesmith.model.generate import Generator, Sampling


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tunesmith webui")
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--system", default="")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


@st.cache_resource(show_spinner="Loading the model...")
def load_engine(model: str, adapter: str | None, device: str) -> Generator:
    return load_generator(model, adapter=adapter, device=device)


def sidebar(default_system: str) -> tuple[Sampling, str]:
    with st.sidebar:
        st.header("Settings")
        max_new_tokens = st.slider("Max length", 8, 2048, 512, step=8)
        top_p = st.slider("Top P", 0.01, 1.0, 0.8, step=0.01)
        temperature = st.slider("Temperature", 0.0, 2.0, 0.7, step=0.05)
        system = st.text_area("System prompt", value=default_system)
        if st.button("Clear chat history"):
            st.session_state.messages = []
    sampling = Sampling(max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature)
    return sampling, system


def main() -> None:
    args = parse_args(sys.argv[1:])
    st.set_page_config(page_title="tunesmith chat")
    st.title("tunesmith chat")
    st.caption(f"{args.model}" + (f" + {args.adapter}" if args.adapter else ""))
    engine = load_engine(args.model, args.adapter, args.device)
    sampling, system = sidebar(args.system)
    st.session_state.setdefault("messages", [])

    for message in st.session_state.messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"])

    question = st.chat_input("Ask something")
    if question is not None and not question.strip():
        st.warning("The question is empty: type some text to ask.")
    elif question:
        st.session_state.messages.append({"role": "user", "content": question})
        with st.chat_message("user"):
            st.markdown(question)
        conversation = list(st.session_state.messages)
        if system.strip():
            conversation.insert(0, {"role": "system", "content": system.strip()})
        with st.chat_message("assistant"), closing(engine.stream(conversation, sampling)) as pieces:
            # A closed tab stops this script run inside write_stream (streamlit raises at its
            # next write); closing the stream then cancels the generation at once, not when
            # the garbage collector gets to it, and the model is free for the other sessions.
            answer = st.write_stream(pieces)
        st.session_state.messages.append({"role": "assistant", "content": answer})


main()
