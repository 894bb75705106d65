"""Turn pydantic validation errors into ``file:line: path: message`` lines.

pydantic lives only at the edge (schema modules). Every schema validates a
``Document``'s data through ``validate_document`` so every config error in meshlet
reads the same way and points at the line to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from meshlet.config.source import Document
from meshlet.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def problems_from(
    exc: ValidationError, document: Document, prefix: Sequence[str | int] = ()
) -> list[str]:
    """One line per pydantic error, located in the document."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        path = (*prefix, *(p for p in error["loc"] if isinstance(p, str | int)))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field (not supported by meshlet)"
        elif "input" in error and error["type"] not in ("missing",):
            shown = repr(error["input"])
            if len(shown) <= 60:
                message = f"{message}, got {shown}"
        lines.append(document.problem(path, message))
    return lines


def validate_document(
    model: type[ModelT],
    document: Document,
    data: object | None = None,
    prefix: Sequence[str | int] = (),
) -> ModelT:
    """Validate ``data`` (default: the whole document) against ``model``."""
    try:
        return model.model_validate(document.data if data is None else data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, document, prefix)) from exc
