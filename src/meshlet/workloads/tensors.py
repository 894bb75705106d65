"""KServe v2 tensor JSON <-> numpy, for the image model.

The Open Inference Protocol (KServe v2 REST) sends tensors as
``{"name", "shape", "datatype", "data"}`` with ``data`` flat or nested in row-major
order. Images arrive either as a numeric tensor (NHWC or NCHW, UINT8 in 0..255 or
floats in 0..1) or, as in the seeds' load tests, as a ``BYTES`` tensor whose items
are base64-encoded raw RGB bytes (224*224*3 = 150,528 bytes per image).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from meshlet.workloads.model import FloatArray

MAX_BATCH = 64  # bounds memory per request; the seeds use batch 4
MAX_PIXELS = MAX_BATCH * 224 * 224  # same bound for other image sizes
_NUMERIC = {
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class TensorError(ValueError):
    """The request's tensor cannot be read as a batch of images (answered with 400)."""


def images_from_request(body: Any) -> FloatArray:
    """The (N, H, W, 3) float32 batch in [0, 1] a KServe v2 infer request carries."""
    if not isinstance(body, dict):
        raise TensorError("request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise TensorError("'inputs' must be a list holding exactly one tensor")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    data = tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise TensorError("'shape' must be a list of positive integers")
    if not isinstance(data, list):
        raise TensorError("'data' must be a list")
    if datatype == "BYTES":
        return _images_from_bytes(shape, data)
    if datatype in _NUMERIC:
        return _images_from_numbers(shape, data, datatype)
    raise TensorError(f"unsupported datatype {datatype!r}")


def _images_from_bytes(shape: list[int], data: list[Any]) -> FloatArray:
    if len(shape) != 1 or shape[0] != len(data):
        raise TensorError("a BYTES tensor must have shape [N] with N base64 items")
    if not 0 < len(data) <= MAX_BATCH:
        raise TensorError(f"batch size must be 1..{MAX_BATCH}, got {len(data)}")
    images = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise TensorError(f"data[{i}] must be a base64 string")
        try:
            raw = base64.b64decode(item, validate=True)
        except binascii.Error as exc:
            raise TensorError(f"data[{i}] is not valid base64") from exc
        side = math.isqrt(len(raw) // 3)
        if side == 0 or side * side * 3 != len(raw):
            raise TensorError(
                f"data[{i}] must decode to a square RGB image (side*side*3 bytes), "
                f"got {len(raw)} bytes"
            )
        images.append(np.frombuffer(raw, dtype=np.uint8).reshape(side, side, 3))
    if len({img.shape for img in images}) != 1:
        raise TensorError("all images in a batch must have the same size")
    return np.stack(images).astype(np.float32) / np.float32(255.0)


def _images_from_numbers(shape: list[int], data: list[Any], datatype: str) -> FloatArray:
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise TensorError("an image tensor must have shape [N,H,W,3] or [N,3,H,W]")
    if shape[0] > MAX_BATCH or math.prod(shape) // 3 > MAX_PIXELS:
        raise TensorError(f"batch too large (at most {MAX_BATCH} images of 224x224)")
    try:
        array = np.asarray(data, dtype=_NUMERIC[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise TensorError(f"'data' is not a list of {datatype} numbers") from exc
    if array.size != math.prod(shape):
        raise TensorError(
            f"'data' has {array.size} values but shape {shape} needs {math.prod(shape)}"
        )
    array = array.reshape(shape)
    if shape[3] != 3:  # NCHW -> NHWC
        array = array.transpose(0, 2, 3, 1)
    floats = array.astype(np.float32)
    return floats / np.float32(255.0) if datatype == "UINT8" else floats


def logits_outputs(logits: FloatArray) -> list[dict[str, Any]]:
    """The v2 ``outputs`` for a batch of logits: the logits and the argmax label."""
    n, classes = logits.shape
    return [
        {
            "name": "logits",
            "datatype": "FP32",
            "shape": [n, classes],
            "data": [round(float(x), 6) for x in logits.reshape(-1)],
        },
        {
            "name": "label",
            "datatype": "INT64",
            "shape": [n],
            "data": [int(k) for k in logits.argmax(axis=1)],
        },
    ]
