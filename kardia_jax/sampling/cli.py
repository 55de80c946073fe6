"""`kardia-jax generate`: completions for one prompt or a JSONL file of prompts,
through the model's chat template, streamed to the terminal; plus the pieces the
`chat` command shares (loading, stop ids, incremental detokenisation, spans).

A prompts file holds one JSON object per line: {"prompt": "..."} or {"messages":
[{"role", "content"}, ...]} (a trailing assistant turn, e.g. a KardiaBench
reference answer, is dropped and kept as "reference"); an "id" is passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence

from kardia_jax.data.spans import SPAN_RE, span_match
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.sampling.tokens import eos_ids_for, load_tokenizer_for, single_token_id


# ------------------------------------------------------------------- shared flags
def add_model_arguments(parser: argparse.ArgumentParser, default_new_tokens: int) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint dir")
    parser.add_argument("--dtype", default="float32", help="parameter / compute dtype")
    parser.add_argument("--system", default=None, help="system message (default: template's)")
    parser.add_argument("--max-new-tokens", type=int, default=default_new_tokens)
    g = parser.add_argument_group("sampling (default: the checkpoint's generation config)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TOKEN",
        help="extra stop token, e.g. '<|response_end|>' (repeatable; one token each)",
    )


def sampling_config(args, generation_config: dict):
    """Flags win; unset ones come from generation_config.json when it samples
    (do_sample), else greedy."""
    from kardia_jax.sampling import SamplingConfig

    gen = generation_config if generation_config.get("do_sample") else {}

    def pick(flag, key, default):
        value = getattr(args, flag)
        return value if value is not None else gen.get(key, default)

    return SamplingConfig(
        temperature=float(pick("temperature", "temperature", 0.0)),
        top_k=int(pick("top_k", "top_k", 0) or 0),
        top_p=float(pick("top_p", "top_p", 1.0)),
        min_p=float(pick("min_p", "min_p", 0.0) or 0.0),
    )


class Session:
    """A loaded model, its tokenizer and a sampler, with the stop ids resolved."""

    def __init__(self, args):
        from kardia_jax.models import load_hf_model
        from kardia_jax.sampling import Sampler

        self.model = load_hf_model(args.model, dtype=args.dtype)
        self.tokenizer = load_tokenizer_for(args.model)
        vocab = self.model.config.vocab_size
        if len(self.tokenizer) > vocab:
            raise ConfigError(
                f"{args.model}: tokenizer has {len(self.tokenizer)} tokens but the model's "
                f"vocabulary is {vocab} (resize it with `kardia-jax model convert --vocab-size`)"
            )
        self.eos_ids = eos_ids_for(self.model.config, self.tokenizer)
        self.stop_ids = [single_token_id(self.tokenizer, s) for s in args.stop]
        pad = self.tokenizer.pad_token_id
        self.sampler = Sampler(
            self.model, eos_ids=self.eos_ids, stop_ids=self.stop_ids, pad_id=pad or 0
        )
        self.sampling = sampling_config(args, self.model.config.generation_config)
        self.system = args.system
        self._next_seed = args.seed

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """Token ids of the chat-templated conversation, ending with the assistant
        header (the model's turn)."""
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system}, *messages]
        from kardia_jax.data.template import render  # no template: one line naming the dir

        text = render(self.tokenizer, messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def text(self, ids: Sequence[int]) -> str:
        """Completion text: span markers kept, a final eos token dropped."""
        ids = list(ids)
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def stream(self, messages: Sequence[dict], max_new_tokens: int, out=None) -> list[int]:
        """Generates a reply, writing its text to `out` (stdout) as it is decoded."""
        out = out or sys.stdout
        ids: list[int] = []
        shown = ""
        stream = self.sampler.stream(
            [self.prompt_ids(messages)], max_new_tokens, self.sampling, seed=self.seed()
        )
        for new in stream:
            ids += new[0]
            text = self.text(ids)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            out.write(text[len(shown) :])
            out.flush()
            shown = text
        return ids

    def seed(self) -> int:
        """--seed, then +1 per call: reproducible, yet no two replies share a key."""
        self._next_seed += 1
        return self._next_seed - 1


# ------------------------------------------------------------------------ spans
def present_spans(text: str) -> dict[str, str]:
    """The four-span sections present in `text` (complete ones, either notation),
    leniently: for display, where `data.spans.parse_spans` is the strict judge."""
    found = {}
    for m in SPAN_RE.finditer(text):
        name, body = span_match(m)
        found.setdefault(name, body.strip())
    return found


def format_spans(spans: dict[str, str]) -> str:
    width = max(map(len, spans))
    return "\n".join(f"  {name:>{width}}: {body}" for name, body in spans.items())


# ----------------------------------------------------------------------- generate
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, default_new_tokens=256)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--prompts-file", help="JSONL of {prompt} or {messages} objects")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per sampler call")
    parser.add_argument("--out", help="write one JSON result per prompt here")


def read_prompts(path: str) -> list[dict]:
    """Records with "messages" (and "id", "reference" when known)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                rec = {"messages": [{"role": "user", "content": obj["prompt"]}]}
            elif (
                isinstance(obj, dict) and isinstance(obj.get("messages"), list) and obj["messages"]
            ):
                messages = list(obj["messages"])
                rec = {}
                if messages[-1].get("role") == "assistant":
                    rec["reference"] = messages.pop()["content"]
                rec["messages"] = messages
            else:
                raise DataError(f'{path}:{n}: expected {{"prompt": str}} or {{"messages": [...]}}')
            if "id" in obj:
                rec["id"] = obj["id"]
            records.append(rec)
    if not records:
        raise DataError(f"{path}: no prompts")
    return records


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def main(args) -> int:
    session = Session(args)
    out = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115
    try:
        if args.prompt is not None:
            messages = [{"role": "user", "content": args.prompt}]
            ids = session.stream(messages, args.max_new_tokens)
            sys.stdout.write("\n")
            results = [_result({"messages": messages}, session, ids)]
        else:
            results = []
            records = read_prompts(args.prompts_file)
            for batch in _batches(records, max(1, args.batch_size)):
                # Whole batches print as they finish; each row's text is complete then.
                done = session.sampler(
                    [session.prompt_ids(r["messages"]) for r in batch],
                    args.max_new_tokens,
                    session.sampling,
                    seed=session.seed(),
                )
                for i, rec in enumerate(batch):
                    res = _result(rec, session, done.ids(i), done.finish_reason[i])
                    sys.stdout.write(f"### {rec.get('id', len(results))}\n{res['completion']}\n")
                    results.append(res)
                sys.stdout.flush()
        if out:
            for res in results:
                out.write(json.dumps(res, ensure_ascii=False) + "\n")
    finally:
        if out:
            out.close()
    return 0


def _result(rec: dict, session: Session, ids: list[int], reason: str | None = None) -> dict:
    if reason is None:  # streamed: infer why it ended
        last = ids[-1] if ids else None
        reason = (
            "eos" if last in session.eos_ids else "stop" if last in session.stop_ids else "length"
        )
    text = session.text(ids)
    res = {k: rec[k] for k in ("id",) if k in rec}
    res.update(
        messages=rec["messages"],
        completion=text,
        token_ids=ids,
        finish_reason=reason,
        spans=present_spans(text) or None,
    )
    if "reference" in rec:
        res["reference"] = rec["reference"]
    return res
