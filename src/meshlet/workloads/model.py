"""The models behind the reference workload: a small CNN, text embeddings, a token source.

The image model is a real convolutional network so that a request through the mesh
costs what an inference request costs (the seeds measure ResNet over 224x224 RGB
images). PyTorch runs it when it imports; otherwise a numpy CNN of the same shape
of work runs instead, so the core install never needs torch. Weights are random
from a fixed seed, or loaded from a local file: nothing is ever downloaded.

Every model takes images as float32 NHWC arrays in [0, 1] of any size (global
average pooling makes the head size-independent), so tests can send 8x8 images
while the demo sends 224x224 ones.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from meshlet.errors import ConfigError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

IMAGE_SIDE = 224  # the seeds' input size (ResNet methodology)
NUM_CLASSES = 10  # small head: the point is compute per request, not accuracy
EMBEDDING_DIM = 64  # small enough to keep JSON responses short
_HASH_BUCKETS = 1024  # hashed byte-trigram features behind the embedding projection

# A fixed vocabulary keeps generated text printable and deterministic per prompt.
_SENTENCE = (
    "the mesh carries every request over mutual tls and each sidecar checks the peer "
    "identity before policy decides whether a model may answer while metrics count "
    "latency success and bytes for the canary split between versions"
)
_VOCAB = tuple(_SENTENCE.split())


class ImageModel(Protocol):
    """Logits for a batch of images."""

    @property
    def backend(self) -> str: ...

    def predict(self, images: FloatArray) -> FloatArray:
        """``images``: (N, H, W, 3) float32 in [0, 1] -> (N, NUM_CLASSES) logits."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """How to build the image model."""

    backend: str = "auto"  # auto | torch | numpy; auto prefers torch when it imports
    weights: Path | None = None  # a torch state_dict (.pt) or numpy archive (.npz)
    seed: int = 0  # fixed so every replica of one version computes the same function
    threads: int = 1  # intra-op threads; 1 keeps a 2-core machine usable for the mesh


class NumpyCnn:
    """conv3x3(3->16) + ReLU + global average pool + linear(16->10), in numpy.

    Images are first sampled down to 32x32 (nearest neighbour), like a stem with a
    large stride; the convolution is an im2col matrix product.
    """

    _SIDE = 32

    def __init__(self, *, seed: int, weights: Path | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.conv = rng.standard_normal((27, 16)).astype(np.float32) * np.float32(0.2)
        self.head = rng.standard_normal((16, NUM_CLASSES)).astype(np.float32) * np.float32(0.5)
        if weights is not None:
            with np.load(weights) as archive:
                self.conv = np.asarray(archive["conv"], dtype=np.float32)
                self.head = np.asarray(archive["head"], dtype=np.float32)

    @property
    def backend(self) -> str:
        return "numpy"

    def predict(self, images: FloatArray) -> FloatArray:
        n, h, w, _ = images.shape
        rows = np.arange(self._SIDE) * h // self._SIDE
        cols = np.arange(self._SIDE) * w // self._SIDE
        small = images[:, rows][:, :, cols]  # (N, 32, 32, 3)
        windows = np.lib.stride_tricks.sliding_window_view(small, (3, 3), axis=(1, 2))
        patches = windows.reshape(n, self._SIDE - 2, self._SIDE - 2, 27)
        features = np.maximum(patches @ self.conv, 0.0).mean(axis=(1, 2))
        return np.asarray(features @ self.head, dtype=np.float32)


class TorchCnn:
    """Three strided conv layers + global average pool + linear head, in PyTorch."""

    def __init__(self, *, seed: int, weights: Path | None, threads: int) -> None:
        import torch
        from torch import nn

        self._torch = torch
        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed)
        self.net: Any = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, NUM_CLASSES),
        )
        if weights is not None:
            self.net.load_state_dict(torch.load(weights, weights_only=True))
        self.net.eval()

    @property
    def backend(self) -> str:
        return "torch"

    def predict(self, images: FloatArray) -> FloatArray:
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            return np.asarray(self.net(batch).numpy(), dtype=np.float32)


def build_image_model(spec: ModelSpec) -> ImageModel:
    """The model ``spec`` asks for; ``auto`` falls back to numpy when torch is absent."""
    if spec.weights is not None and not spec.weights.is_file():
        raise ConfigError(f"--weights: no such file: {spec.weights}")
    if spec.backend not in ("auto", "torch", "numpy"):
        raise ConfigError(f"--backend: must be auto, torch or numpy, got {spec.backend!r}")
    if spec.backend in ("auto", "torch"):
        try:
            return TorchCnn(seed=spec.seed, weights=spec.weights, threads=spec.threads)
        except ImportError:
            if spec.backend == "torch":
                raise ConfigError("--backend torch: PyTorch is not installed") from None
            log.info("model_backend_fallback", extra={"reason": "torch not importable"})
    return NumpyCnn(seed=spec.seed, weights=spec.weights)


class TextEncoder:
    """Deterministic sentence embeddings: hashed byte trigrams -> fixed projection.

    Not a language model, but real per-request work whose output depends on the
    input, is unit-length, and is the same on every replica.
    """

    def __init__(self, *, seed: int) -> None:
        rng = np.random.default_rng(seed + 1)
        self.projection = rng.standard_normal((_HASH_BUCKETS, EMBEDDING_DIM)).astype(np.float32)

    def embed(self, text: str) -> FloatArray:
        data = text.encode("utf-8")
        counts = np.zeros(_HASH_BUCKETS, dtype=np.float32)
        for i in range(max(1, len(data) - 2)):
            counts[zlib.crc32(data[i : i + 3]) % _HASH_BUCKETS] += 1.0
        vector = counts @ self.projection
        norm = float(np.linalg.norm(vector))
        return np.asarray(vector / norm if norm else vector, dtype=np.float32)


def generate_tokens(prompt: str, max_tokens: int, *, seed: int) -> list[str]:
    """``max_tokens`` words chosen deterministically from the prompt and seed."""
    rng = np.random.default_rng(zlib.crc32(prompt.encode("utf-8")) + seed)
    picks = rng.integers(0, len(_VOCAB), size=max_tokens)
    return [(" " if i else "") + _VOCAB[int(k)] for i, k in enumerate(picks)]
