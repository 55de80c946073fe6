"""`kardia-jax chat`: an interactive conversation with a checkpoint, replies
streamed as they are generated; a reply in the four-span format is then shown
span by span (understanding, reasoning, emotion, response).

Commands: /reset starts over, /quit (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import sys

from kardia_jax.sampling.cli import Session, add_model_arguments, format_spans, present_spans


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default_new_tokens=512)


def main(args) -> int:
    session = Session(args)
    out = sys.stdout
    out.write(f"kardia-jax chat: {args.model} (/reset, /quit)\n")
    messages: list[dict] = []
    while True:
        out.write("you> ")
        out.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            out.write("\n")
            return 0
        line = line.strip()
        if line == "/quit":
            return 0
        if line == "/reset":
            messages = []
            out.write("(conversation reset)\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        out.write("assistant> ")
        ids = session.stream(messages, args.max_new_tokens, out)
        out.write("\n")
        reply = session.text(ids)
        spans = present_spans(reply)
        if spans:
            out.write(format_spans(spans) + "\n")
        messages.append({"role": "assistant", "content": reply})
