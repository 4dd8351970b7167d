"""dalle.weight_files: flax msgpack read without jax (arrays, bfloat16, numpy scalars, chunked arrays), torch state
dicts read with weights_only; damaged files give clear errors."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from dalle.weight_files import WeightsError, flatten, read_flax_msgpack, read_torch_state_dict


def ext(array: np.ndarray, dtype_name: str | None = None, code: int = 1) -> msgpack.ExtType:
    """flax's encoding of one array: (shape, dtype name, C-order bytes), itself msgpack-packed."""
    packed = (list(array.shape), dtype_name or array.dtype.name, array.tobytes())
    return msgpack.ExtType(code, msgpack.packb(packed, use_bin_type=True))


def test_reads_arrays_bf16_scalars_and_chunks(tmp_path):
    kernel = np.arange(12, dtype=np.float32).reshape(3, 4)
    bf16 = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16)
    long = np.arange(10, dtype=np.float32)
    tree = {
        "params": {
            "dense": {"kernel": ext(kernel)},
            "norm": {"scale": ext(bf16.view(torch.int16).numpy(), "bfloat16")},
            "step": ext(np.asarray(7, dtype=np.int32), code=3),
            # flax splits arrays over its chunk size into flat pieces
            "big": {
                "__msgpack_chunked_array__": True,
                "shape": {"0": 2, "1": 5},
                "chunks": {"0": ext(long[:6]), "1": ext(long[6:])},
            },
        }
    }
    (tmp_path / "f.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    out = read_flax_msgpack(tmp_path / "f.msgpack", torch.float16)
    params = dict(flatten(out))
    assert params["params/dense/kernel"].dtype == torch.float16
    assert torch.equal(params["params/dense/kernel"], torch.from_numpy(kernel).half())
    assert torch.equal(params["params/norm/scale"], bf16.half())
    assert params["params/step"].dtype == torch.int32 and params["params/step"].item() == 7  # integers keep their type
    assert torch.equal(params["params/big"], torch.from_numpy(long).reshape(2, 5).half())
    assert out == {}  # flatten empties the tree as it goes


def test_damaged_files_are_clear_errors(tmp_path):
    (tmp_path / "list.msgpack").write_bytes(msgpack.packb([1, 2]))
    with pytest.raises(WeightsError, match="not a flax parameter tree"):
        read_flax_msgpack(tmp_path / "list.msgpack")
    (tmp_path / "ext.msgpack").write_bytes(msgpack.packb({"a": msgpack.ExtType(9, b"x")}))
    with pytest.raises(WeightsError, match="extension type 9"):
        read_flax_msgpack(tmp_path / "ext.msgpack")
    pair = msgpack.ExtType(1, msgpack.packb(([2], "float32")))
    (tmp_path / "pair.msgpack").write_bytes(msgpack.packb({"a": pair}))
    with pytest.raises(WeightsError, match="malformed"):
        read_flax_msgpack(tmp_path / "pair.msgpack")
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert read_torch_state_dict(tmp_path / "ok.pt", torch.bfloat16)["w"].dtype == torch.bfloat16
    torch.save({"w": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict of tensors"):
        read_torch_state_dict(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(WeightsError, match="damaged or truncated"):
        read_torch_state_dict(tmp_path / "junk.pt")
