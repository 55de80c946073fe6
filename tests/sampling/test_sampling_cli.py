"""`kardia-jax generate` and `kardia-jax chat` from a user's side: a checkpoint with
its own tokenizer, streamed text, JSONL results, stop tokens and span display."""

import argparse
import io
import json

import pytest

from kardia_jax.cli import main
from kardia_jax.errors import KardiaError
from kardia_jax.sampling import chat, cli


def run(module, argv):
    """Through the `kardia-jax` dispatcher, as a user runs it."""
    return main([{cli: "generate", chat: "chat"}[module], *argv])


def test_generate_streams_one_prompt_and_writes_jsonl(chat_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    argv = ["--model", chat_checkpoint, "--prompt", "hello there", "--max-new-tokens", "12"]
    assert run(cli, [*argv, "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    (res,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert res["messages"] == [{"role": "user", "content": "hello there"}]
    assert 1 <= len(res["token_ids"]) <= 12 and res["finish_reason"] in ("eos", "length")
    assert shown == res["completion"] + "\n"  # what streamed is the completion, in full
    # The same prompt through the library: the CLI is a thin layer over it.
    session = cli.Session(cli_args(chat_checkpoint))
    prompt = session.prompt_ids(res["messages"])
    assert session.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    ref = session.sampler([prompt], 12, session.sampling, seed=0)
    assert res["token_ids"] == ref.ids(0)


def cli_args(model, *extra):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["--model", model, "--prompt", "x", *extra])


def test_generate_prompts_file_batches_and_stop_tokens(chat_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "prompt": "I feel lonely today"},
        {"id": "b", "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "My dog died."},
            {"role": "assistant", "content": "reference answer"},
        ]},
        {"prompt": "third"},
    ]  # fmt: skip
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["--model", chat_checkpoint, "--prompts-file", str(prompts), "--batch-size", "2"]
    argv += ["--max-new-tokens", "8", "--out", str(out)]
    assert run(cli, argv) == 0
    assert capsys.readouterr().out.count("### ") == 3
    free = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("id") for r in free] == ["a", "b", None]
    assert free[1]["reference"] == "reference answer"
    assert free[1]["messages"][-1] == {"role": "user", "content": "My dog died."}
    assert [len(r["token_ids"]) for r in free] == [8, 8, 8]  # no eos from this model
    # A stop token taken from the first completion ends every row at its first
    # occurrence (kept as the row's last token), or not at all.
    stop_id = free[0]["token_ids"][2]
    assert run(cli, [*argv, "--stop", chat_tokenizer_decode(chat_checkpoint, stop_id)]) == 0
    for old, new in zip(free, (json.loads(x) for x in out.read_text().splitlines()), strict=True):
        ids = old["token_ids"]
        end = ids.index(stop_id) + 1 if stop_id in ids else len(ids)
        assert new["token_ids"] == ids[:end]
        assert new["finish_reason"] == ("stop" if stop_id in ids else "length")
    assert free[0]["token_ids"].index(stop_id) <= 2


def chat_tokenizer_decode(path, token_id):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).decode([token_id])


def test_chat_turns_reset_and_quit(chat_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n/reset\nhow are you?\n/quit\n"))
    assert run(chat, ["--model", chat_checkpoint, "--max-new-tokens", "6"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("assistant> ") == 2 and "(conversation reset)" in shown


def test_spans_are_shown_separately():
    text = (
        "<|understanding_begin|>She misses her dog.<|understanding_end|>"
        "<|reasoning_begin|>Loss hurts.<|reasoning_end|>"
        "<|emotion_begin|>sad<|emotion_end|><|response_begin|> I'm so sorry. <|response_end|>"
    )
    spans = cli.present_spans(text)
    assert list(spans) == ["understanding", "reasoning", "emotion", "response"]
    assert spans["response"] == "I'm so sorry."
    assert "emotion: sad" in cli.format_spans(spans)
    assert cli.present_spans("<emotion>sad</emotion> and <response>x") == {"emotion": "sad"}
    assert cli.present_spans("plain text") == {}


def test_user_mistakes_are_one_line_errors(chat_checkpoint, tmp_path, capsys):
    with pytest.raises(KardiaError, match="not one"):
        cli.Session(cli_args(chat_checkpoint, "--stop", "two tokens"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    assert run(cli, ["--model", chat_checkpoint, "--prompts-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kardia-jax generate: error: ") and "bad.jsonl:1: expected" in err
    assert "\n" not in err
