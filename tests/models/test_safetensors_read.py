"""Reading safetensors through the `safetensors` library: bfloat16 slices come back as
ml_dtypes arrays equal to torch's own values, and a bad file is one line naming it."""

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as torch_save_file

from kardia_jax.errors import CheckpointError
from kardia_jax.models.checkpoint import TensorFile


def test_bf16_written_by_torch_reads_as_ml_dtypes_slices(tmp_path):
    # Written by the torch side of the library, so the bytes are not ours.
    ref = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    torch_save_file({"w": ref}, str(tmp_path / "t.safetensors"))
    f = TensorFile(str(tmp_path / "t.safetensors"))
    expected = ref.float().numpy()
    whole = f.read("w")
    assert whole.dtype == np.dtype(ml_dtypes.bfloat16) and f.shape("w") == (6, 10)
    np.testing.assert_array_equal(whole.astype(np.float32), expected)
    part = f.read("w", (slice(2, 4), slice(3, 9)))
    assert part.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(part.astype(np.float32), expected[2:4, 3:9])


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[:5],  # not even the header length
        lambda b: b[:8] + b"{not json" + b[17:],
        lambda b: (10**12).to_bytes(8, "little") + b[8:],
    ],
    ids=["no header", "bad header json", "header length past the end"],
)
def test_corrupt_file_is_one_line_naming_it(tmp_path, corrupt):
    path = tmp_path / "t.safetensors"
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(path))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CheckpointError) as e:
        TensorFile(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a valid safetensors file") and "\n" not in msg


def test_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}/none.safetensors: cannot read"):
        TensorFile(str(tmp_path / "none.safetensors"))
