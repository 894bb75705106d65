"""Request bodies for the ``inference`` workload, made once per run.

The seeds' load tests send KServe v2 infer requests with a batch of 4 images,
224x224 RGB, each as base64 of the raw bytes in a ``BYTES`` tensor; so does
this. Pixels come from a seeded generator so every topology and repetition
sends the same bytes (and the same compute per request).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

INFER_PATH = "/v2/models/resnet-small/infer"  # the reference server's default model name
READY_PATH = "/v2/health/ready"  # 503 until the model is loaded, then 200


def inference_body(*, batch: int = 4, side: int = 224, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    images = [
        base64.b64encode(rng.integers(0, 256, size=side * side * 3, dtype=np.uint8).tobytes())
        for _ in range(batch)
    ]
    tensor = {
        "name": "images",
        "shape": [batch],
        "datatype": "BYTES",
        "data": [img.decode("ascii") for img in images],
    }
    return json.dumps({"inputs": [tensor]}).encode()


def write_inference_body(path: Path) -> Path:
    path.write_bytes(inference_body())
    return path
