"""`kardia-jax model ...`: a user's view of checkpoint inspection and conversion."""

import json

from kardia_jax.cli import main


def test_model_info_and_convert(hf_checkpoint, tmp_path, capsys):
    path, _ = hf_checkpoint("qwen3")
    assert main(["model", "info", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "qwen3" and info["heads"] == "4 query / 2 kv x 32"
    assert main(["model", "convert", path, str(tmp_path / "out"), "--vocab-size", "300"]) == 0
    capsys.readouterr()
    assert main(["model", "info", str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 300


def test_user_mistakes_are_one_line_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["model", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kardia-jax model: error: {tmp_path / 'missing'}: not a directory"
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["model", "info", str(tmp_path)]) == 2
    assert "model_type='bert' is not supported" in capsys.readouterr().err
