"""The reference workload's HTTP API: KServe v2 REST and an OpenAI-compatible subset.

``InferenceApp.handle`` takes a parsed request and returns a ``Reply`` (a whole
body) or a ``StreamReply`` (an async iterator of body chunks, for SSE). The server
module owns sockets and framing; this module owns what each endpoint means.

Every reply carries ``x-model-version`` (so a client can measure a canary split)
and inference replies carry ``x-compute-ms`` (time spent in the model, so the
mesh's added latency can be told apart from the model's). Chat replies carry
``x-requested-model``: the ``model`` the request body named when it arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meshlet.workloads.model import (
    IMAGE_SIDE,
    NUM_CLASSES,
    ImageModel,
    ModelSpec,
    TextEncoder,
    build_image_model,
    generate_tokens,
)
from meshlet.workloads.tensors import TensorError, images_from_request, logits_outputs

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_TOKENS_LIMIT = 4096  # bounds one chat request's duration
DEFAULT_MAX_TOKENS = 16  # short answers keep demos and tests quick


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lowercased names; the last value wins (enough for an app)
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReply:
    status: int
    chunks: AsyncGenerator[bytes, None]
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What ``python -m meshlet.workloads.inference`` was asked to be."""

    model_name: str = "resnet-small"  # the seeds' workload is a ResNet classifier
    model_version: str = "v1"
    instance: str = ""  # shown as x-served-by; defaults to name-version@port
    fail_rate: float = 0.0  # share of inference requests answered 503, for retry demos
    delay_ms: float = 0.0  # added to each inference request, for timeout/outlier demos
    token_interval_ms: float = 5.0  # time per generated token (chat), like a small LLM
    seed: int = 0  # model weights and failure draws; fixed so runs repeat
    model: ModelSpec = field(default_factory=ModelSpec)


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status=status, body=body, headers=headers)


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message})


class InferenceApp:
    """Routes requests to the model; the model loads on a thread after the socket
    is bound, so ``/v2/health/live`` answers at once and ``ready`` waits for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: ImageModel | None = None
        self.encoder = TextEncoder(seed=settings.seed)
        # One inference thread: the model is the bottleneck of a real server too, and
        # the event loop must stay free to answer health checks and stream tokens.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._failures = random.Random(settings.seed)
        self._counter = 0

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        self.model = await loop.run_in_executor(
            self._executor, build_image_model, self.settings.model
        )
        log.info("model_ready", extra={"backend": self.model.backend})

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _common(self) -> tuple[tuple[str, str], ...]:
        return (
            ("x-model-version", self.settings.model_version),
            ("x-served-by", self.settings.instance),
        )

    async def handle(self, request: Request) -> Reply | StreamReply:
        reply = await self._route(request)
        extra = self._common()
        if isinstance(reply, Reply):
            return Reply(
                status=reply.status,
                body=reply.body,
                content_type=reply.content_type,
                headers=(*reply.headers, *extra),
            )
        return StreamReply(
            status=reply.status,
            chunks=reply.chunks,
            content_type=reply.content_type,
            headers=(*reply.headers, *extra),
        )

    async def _route(self, request: Request) -> Reply | StreamReply:
        method, parts = request.method, request.path.strip("/").split("/")
        name = self.settings.model_name
        if parts[:1] == ["v2"]:
            if parts == ["v2", "health", "live"]:
                return _json(200, {"live": True})
            if parts == ["v2", "health", "ready"] or parts == ["v2", "models", name, "ready"]:
                ready = self.model is not None
                return _json(200 if ready else 503, {"ready": ready})
            if parts == ["v2"]:
                return _json(200, {"name": "meshlet-inference", "version": "2", "extensions": []})
            if len(parts) >= 3 and parts[1] == "models" and parts[2] != name:
                return _error(404, f"unknown model {parts[2]!r}; this server has {name!r}")
            if parts == ["v2", "models", name]:
                return self._metadata()
            if parts in (
                ["v2", "models", name, "infer"],
                ["v2", "models", name, "versions", self.settings.model_version, "infer"],
            ):
                if method != "POST":
                    return _error(405, "use POST")
                return await self._infer(request)
        elif parts == ["v1", "chat", "completions"]:
            return await self._chat(request) if method == "POST" else _error(405, "use POST")
        elif parts == ["v1", "embeddings"]:
            return await self._embeddings(request) if method == "POST" else _error(405, "use POST")
        elif parts == ["v1", "models"]:
            return _json(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
        return _error(404, f"no route for {request.path}")

    def _metadata(self) -> Reply:
        backend = self.model.backend if self.model is not None else "loading"
        return _json(
            200,
            {
                "name": self.settings.model_name,
                "versions": [self.settings.model_version],
                "platform": "pytorch" if backend == "torch" else backend,
                "inputs": [
                    {"name": "image", "datatype": "FP32", "shape": [-1, IMAGE_SIDE, IMAGE_SIDE, 3]}
                ],
                "outputs": [
                    {"name": "logits", "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                ],
            },
        )

    async def _injected(self) -> Reply | None:
        """The failure or delay the command line asked for, before real work."""
        if self.settings.delay_ms > 0:
            await asyncio.sleep(self.settings.delay_ms / 1000)
        if self.settings.fail_rate > 0 and self._failures.random() < self.settings.fail_rate:
            return Reply(
                status=503,
                body=b'{"error":"injected failure (--fail-rate)"}',
                headers=(("x-injected-failure", "1"),),
            )
        return None

    async def _timed(self, fn: Callable[[], T]) -> tuple[T, float]:
        def run() -> tuple[T, float]:
            start = time.perf_counter()
            result = fn()
            return result, (time.perf_counter() - start) * 1000

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _infer(self, request: Request) -> Reply:
        model = self.model
        if model is None:
            return _error(503, "model is still loading")
        if (injected := await self._injected()) is not None:
            return injected
        try:
            body = json.loads(request.body)
            images = images_from_request(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        except TensorError as exc:
            return _error(400, str(exc))
        logits, compute_ms = await self._timed(lambda: model.predict(images))
        self._counter += 1
        payload = {
            "model_name": self.settings.model_name,
            "model_version": self.settings.model_version,
            "id": body.get("id") or request.headers.get("x-request-id") or str(self._counter),
            "outputs": logits_outputs(logits),
            "parameters": {
                "compute_ms": round(compute_ms, 3),
                "backend": model.backend,
                "served_by": self.settings.instance,
            },
        }
        return _json(200, payload, (("x-compute-ms", f"{compute_ms:.3f}"),))

    async def _embeddings(self, request: Request) -> Reply:
        if (injected := await self._injected()) is not None:
            return injected
        try:
            body = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a non-empty list of strings")
        vectors, compute_ms = await self._timed(lambda: [self.encoder.embed(t) for t in texts])
        tokens = sum(len(t.split()) for t in texts)
        payload = {
            "object": "list",
            "model": self.settings.model_name,
            "data": [
                {"object": "embedding", "index": i, "embedding": [round(float(x), 6) for x in v]}
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "compute_ms": round(compute_ms, 3),
        }
        return _json(200, payload, (("x-compute-ms", f"{compute_ms:.3f}"),))

    async def _chat(self, request: Request) -> Reply | StreamReply:
        if (injected := await self._injected()) is not None:
            return injected
        try:
            body = json.loads(request.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
        ):
            return _error(400, "'messages' must be a non-empty list of {role, content}")
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or not 0 < max_tokens <= MAX_TOKENS_LIMIT:
            return _error(400, f"'max_tokens' must be an integer in 1..{MAX_TOKENS_LIMIT}")
        prompt = messages[-1]["content"]
        # The model (LoRA adapter or version) the request named, as the mesh
        # delivered it: lets a client see which target an InferenceModel chose.
        asked = body.get("model")
        named = (
            (("x-requested-model", asked),)
            if isinstance(asked, str) and asked.isascii() and asked.isprintable()
            else ()
        )
        tokens = generate_tokens(prompt, max_tokens, seed=self.settings.seed)
        self._counter += 1
        completion_id = f"chatcmpl-{self.settings.instance}-{self._counter}"
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(tokens),
            "total_tokens": len(prompt.split()) + len(tokens),
        }
        if body.get("stream") is True:
            return StreamReply(
                status=200, chunks=self._stream(completion_id, tokens, usage), headers=named
            )
        start = time.perf_counter()
        await asyncio.sleep(self.settings.token_interval_ms * len(tokens) / 1000)
        compute_ms = (time.perf_counter() - start) * 1000
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "model": self.settings.model_name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length" if len(tokens) == max_tokens else "stop",
                    "message": {"role": "assistant", "content": "".join(tokens)},
                }
            ],
            "usage": usage,
            "compute_ms": round(compute_ms, 3),
        }
        return _json(200, payload, (("x-compute-ms", f"{compute_ms:.3f}"), *named))

    async def _stream(
        self, completion_id: str, tokens: list[str], usage: dict[str, int]
    ) -> AsyncGenerator[bytes, None]:
        """SSE chunks as OpenAI sends them: role first, one delta per token, then the
        finish reason, then ``[DONE]``; each token after ``token_interval_ms``."""

        def event(delta: dict[str, str], finish: str | None, **extra: Any) -> bytes:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "model": self.settings.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

        yield event({"role": "assistant"}, None)
        for token in tokens:
            await asyncio.sleep(self.settings.token_interval_ms / 1000)
            yield event({"content": token}, None)
        yield event({}, "length", usage=usage)
        yield b"data: [DONE]\n\n"
