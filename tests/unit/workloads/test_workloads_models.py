"""The reference workload's models and tensor decoding, with no sockets."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from meshlet.errors import ConfigError
from meshlet.workloads.model import (
    EMBEDDING_DIM,
    NUM_CLASSES,
    ModelSpec,
    NumpyCnn,
    TextEncoder,
    build_image_model,
    generate_tokens,
)
from meshlet.workloads.tensors import TensorError, images_from_request, logits_outputs


def _bytes_request(images: list[bytes]) -> dict[str, object]:
    data = [base64.b64encode(img).decode() for img in images]
    return {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}]}


def test_base64_224_images_decode_to_nhwc_floats() -> None:
    raw = bytes(range(256)) * (224 * 224 * 3 // 256)
    batch = images_from_request(_bytes_request([raw, raw]))
    assert batch.shape == (2, 224, 224, 3)
    assert batch.dtype == np.float32
    assert batch[0, 0, 0, 1] == pytest.approx(1 / 255)
    assert float(batch.max()) <= 1.0


def test_nchw_uint8_tensor_is_transposed_and_scaled() -> None:
    data = list(range(2 * 3 * 2 * 2))
    body = {"inputs": [{"name": "x", "shape": [2, 3, 2, 2], "datatype": "UINT8", "data": data}]}
    batch = images_from_request(body)
    assert batch.shape == (2, 2, 2, 3)
    # channel 1 of pixel (0, 0) of image 0 is element [0, 1, 0, 0] = 4
    assert batch[0, 0, 0, 1] == pytest.approx(4 / 255)


def test_fp32_nhwc_tensor_is_taken_as_is() -> None:
    body = {"inputs": [{"shape": [1, 1, 2, 3], "datatype": "FP32", "data": [[0.5] * 6]}]}
    assert images_from_request(body).tolist() == [[[[0.5] * 3] * 2]]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param([], "JSON object", id="not-object"),
        pytest.param({"inputs": []}, "exactly one", id="no-inputs"),
        pytest.param(
            {"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["!!"]}]},
            "base64",
            id="bad-base64",
        ),
        pytest.param(
            {"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["AAAAAA=="]}]},
            "square RGB",
            id="not-square",
        ),
        pytest.param(
            {"inputs": [{"shape": [1, 2, 2, 3], "datatype": "FP32", "data": [1.0]}]},
            "needs 12",
            id="short-data",
        ),
        pytest.param(
            {"inputs": [{"shape": [1, 2, 2, 2], "datatype": "FP32", "data": [0] * 8}]},
            "[N,H,W,3]",
            id="no-channel-axis",
        ),
        pytest.param(
            {"inputs": [{"shape": [1], "datatype": "BOOL", "data": [True]}]},
            "unsupported datatype",
            id="datatype",
        ),
        pytest.param(
            {"inputs": [{"shape": [65, 2, 2, 3], "datatype": "FP32", "data": []}]},
            "too large",
            id="batch-too-large",
        ),
    ],
)
def test_bad_tensors_are_refused_with_a_reason(body: object, needle: str) -> None:
    with pytest.raises(TensorError) as info:
        images_from_request(body)
    assert needle in str(info.value)


def test_numpy_cnn_is_deterministic_per_seed_and_size_independent() -> None:
    rng = np.random.default_rng(7)
    images = rng.random((3, 224, 224, 3), dtype=np.float32)
    a = NumpyCnn(seed=1).predict(images)
    b = NumpyCnn(seed=1).predict(images)
    c = NumpyCnn(seed=2).predict(images)
    assert a.shape == (3, NUM_CLASSES)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert NumpyCnn(seed=1).predict(images[:, :8, :8]).shape == (3, NUM_CLASSES)


def test_numpy_weights_load_from_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, conv=np.zeros((27, 16), np.float32), head=np.ones((16, NUM_CLASSES), np.float32))
    model = build_image_model(ModelSpec(backend="numpy", weights=path))
    out = model.predict(np.ones((1, 8, 8, 3), np.float32))
    np.testing.assert_array_equal(out, np.zeros((1, NUM_CLASSES), np.float32))


def test_missing_weights_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        build_image_model(ModelSpec(weights=tmp_path / "absent.pt"))


def test_torch_cnn_when_torch_is_installed() -> None:
    pytest.importorskip("torch")
    model = build_image_model(ModelSpec(backend="torch", seed=3))
    assert model.backend == "torch"
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    out = model.predict(images)
    assert out.shape == (2, NUM_CLASSES)
    np.testing.assert_allclose(
        out, build_image_model(ModelSpec(backend="torch", seed=3)).predict(images), rtol=1e-5
    )


def test_embeddings_are_unit_length_and_input_dependent() -> None:
    enc = TextEncoder(seed=0)
    a, b = enc.embed("hello mesh"), enc.embed("goodbye mesh")
    assert a.shape == (EMBEDDING_DIM,)
    assert float(np.linalg.norm(a)) == pytest.approx(1.0, rel=1e-5)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, TextEncoder(seed=0).embed("hello mesh"))


def test_tokens_are_deterministic_and_counted() -> None:
    tokens = generate_tokens("hi", 5, seed=0)
    assert len(tokens) == 5
    assert tokens == generate_tokens("hi", 5, seed=0)
    assert all(t.startswith(" ") for t in tokens[1:])


def test_logits_outputs_report_argmax_labels() -> None:
    out = logits_outputs(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32))
    assert out[0]["shape"] == [2, 3]
    assert out[1]["data"] == [1, 0]
