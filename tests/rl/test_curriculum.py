"""The easy / hard curriculum of the train split: the base policy's likelihood of the
reference turns (checked against an unbatched forward pass), the rank cut, the
paper's verdict rule when records carry the rates, and the files and report."""

import json

import numpy as np
import pytest

from kardia_jax.data.examples import build_examples
from kardia_jax.data.tokenizer import load_tokenizer, span_marker_ids
from kardia_jax.data.validate import load_dialogues
from kardia_jax.errors import ConfigError, DataError
from kardia_jax.models import load_hf_model
from kardia_jax.models.logprobs import sequence_log_probs
from kardia_jax.rl.difficulty import curriculum, reference_log_likelihood, split_by_rank

from .conftest import DIALOGUES, read_jsonl, short_record, write_jsonl


@pytest.fixture(scope="module")
def loaded(rl_policy, short_data):
    tok = load_tokenizer(rl_policy)
    dialogues, _ = load_dialogues(f"{short_data}:train", split="train")
    examples = build_examples(dialogues, tok, max_length=256)
    return tok, dialogues, examples, load_hf_model(rl_policy, "float32")


def test_likelihood_equals_unbatched_forward_without_markers(loaded):
    tok, _, examples, model = loaded
    markers = np.asarray(sorted(span_marker_ids(tok).values()))
    got = reference_log_likelihood(model, examples, skip_ids=markers, batch_size=3)
    for ex, value in zip(examples, got, strict=True):
        logp = np.asarray(sequence_log_probs(model, ex.input_ids[None]))[0]
        keep = (ex.loss_mask[1:] > 0) & ~np.isin(ex.input_ids[1:], markers)
        assert keep.sum() > 0 and (ex.loss_mask[1:] > keep).any()  # markers were targets
        assert value == pytest.approx(logp[keep].mean(), abs=1e-5)
    with_markers = reference_log_likelihood(model, examples[:2], batch_size=2)
    assert not np.allclose(with_markers, got[:2])


def test_rank_cut(loaded):
    _, dialogues, examples, _ = loaded
    # A score per example that makes each dialogue's mean its index.
    index = {d.location: i for i, d in enumerate(dialogues)}
    scores = np.asarray([index[ex.location] for ex in examples], np.float64)
    split = split_by_rank(dialogues, examples, scores, 0.25)
    n = len(dialogues)
    assert [d.location for d in split.easy] == [d.location for d in dialogues[n - round(n / 4) :]]
    assert len(split.easy) + len(split.hard) == n and not split.unscored
    tiny = split_by_rank(dialogues, examples, scores, 0.01)  # never an empty side
    assert len(tiny.easy) == 1 and len(tiny.hard) == n - 1
    with pytest.raises(ConfigError, match="easy_fraction"):
        split_by_rank(dialogues, examples, scores, 1.0)


def test_curriculum_files_and_report(tmp_path, rl_policy, short_data):
    out = tmp_path / "split"
    result = curriculum(
        rl_policy,
        f"{short_data}:train",
        str(out),
        easy_fraction=0.5,
        dtype="float32",
        max_length=256,
        batch_size=4,
        log=lambda s: None,
    )
    assert result["signal"] == "likelihood"
    n = result["counts"]
    assert (n["easy"], n["hard"], n["dialogues"]) == (4, 4, len(DIALOGUES))
    assert n["easy_fraction"] == 0.5
    report = json.loads((out / "difficulty.json").read_text())
    score = {d["location"]: (d["split"], d["mean_log_prob"]) for d in report["dialogues"]}
    easy = [v for s, v in score.values() if s == "easy"]
    hard = [v for s, v in score.values() if s == "hard"]
    assert min(easy) >= max(hard)
    records, easy_rows, hard_rows = (
        read_jsonl(p) for p in (short_data, out / "easy.jsonl", out / "hard.jsonl")
    )
    assert sorted(map(json.dumps, easy_rows + hard_rows)) == sorted(map(json.dumps, records))
    # The stages read the files back as the train split.
    assert len(load_dialogues(f"{out / 'easy.jsonl'}:train", split="train")[0]) == 4


def test_verdicts_take_the_papers_rule_without_a_model(tmp_path):
    records = [short_record(i, *d) for i, d in enumerate(DIALOGUES)]
    for i, r in enumerate(records):  # even: easy (fail < pass + solved), odd: hard
        r.update(p_FAIL=0.1 if i % 2 == 0 else 0.8, p_PASS=0.5, p_SOLVED=0.0)
    data = write_jsonl(tmp_path / "train.jsonl", records)
    result = curriculum(None, data, str(tmp_path / "split"), log=lambda s: None)
    assert result["signal"] == "verdicts"
    easy = read_jsonl(tmp_path / "split" / "easy.jsonl")
    assert [r["anon_username"] for r in easy] == [r["anon_username"] for r in records[::2]]
    del records[0]["p_FAIL"]  # one record without the rates: not the paper's rule
    write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(DataError, match="needs p_fail / p_pass / p_solved on every record"):
        curriculum(None, data, str(tmp_path / "s2"), signal="verdicts")
    with pytest.raises(ConfigError, match="scores with the base policy"):
        curriculum(None, data, str(tmp_path / "s3"))


CHILD = """
import json, sys
import jax
from kardia_jax.train.distributed import maybe_initialize
port, pid, policy, data, out = sys.argv[1:]
if pid != "-":
    maybe_initialize(f"localhost:{port}", 2, int(pid))
from kardia_jax.rl.difficulty import curriculum
from kardia_jax.train.setup import mesh_and_rules
from ml_collections import ConfigDict
mesh, rules = mesh_and_rules(ConfigDict(dict(sharding="fsdp", mesh={}, dcn_mesh={})))
r = curriculum(policy, data, out, dtype="float32", max_length=256, batch_size=4,
               mesh=mesh, rules=rules, log=lambda s: None)
print("COUNTS " + json.dumps(r["counts"]), flush=True)
"""


def test_two_processes_split_as_one_does(tmp_path, rl_policy, short_data):
    """A pod's path: two processes (two devices each, gloo) score their rows of each
    batch on one mesh; both get every score, one writes, and the split equals the
    one-process split over four devices."""
    import os
    import socket
    import subprocess
    import sys

    import jax

    from ..train.conftest import REPO

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]

    def start(pid, devices, out):
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
        args = [str(port), pid, rl_policy, f"{short_data}:train", str(out)]
        return subprocess.Popen(
            [sys.executable, str(script), *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    one = start("-", 4, tmp_path / "one")
    two = [start(str(i), 2, tmp_path / "two") for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in (one, *two)]
    assert all(p.returncode == 0 for p in (one, *two)), outs
    # Gloo logs to the same stream, at any time: the counts line carries a tag.
    counts = [
        json.loads(next(x for x in o.splitlines() if x.startswith("COUNTS "))[7:]) for o in outs
    ]
    assert counts[0] == counts[1] == counts[2] and counts[0]["easy"] == 4
    a = json.loads((tmp_path / "one" / "difficulty.json").read_text())
    b = json.loads((tmp_path / "two" / "difficulty.json").read_text())
    for x, y in zip(a["dialogues"], b["dialogues"], strict=True):
        assert x["split"] == y["split"]
        assert x["mean_log_prob"] == pytest.approx(y["mean_log_prob"], abs=1e-5)
    for name in ("easy.jsonl", "hard.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
