"""Read YAML documents while remembering where every value came from.

PyYAML's plain loaders throw away positions, but every config error a user sees
must say ``file:line``. So documents are composed into nodes first and converted
to plain Python data here, recording the line of each mapping key and sequence
item under its path (``("spec", "rules", 0, "from")``). Nothing else in meshlet
touches a YAML node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshlet.errors import ConfigError

PathKey = tuple[str | int, ...]

_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One YAML document: its data, where it came from, and a line for each path."""

    data: Any
    file: str
    index: int  # position in a multi-document file, from 0
    line: int  # 1-based line of the document's first node
    lines: dict[PathKey, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            found = self.lines.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return self.line

    def where(self, path: Sequence[str | int] = ()) -> str:
        """``file:line`` for ``path``: the prefix of every error about this document."""
        return f"{self.file}:{self.line_of(path)}"

    def problem(self, path: Sequence[str | int], message: str) -> str:
        """One error line: ``file:line: a.b[2].c: message``."""
        dotted = format_path(path)
        return (
            f"{self.where(path)}: {dotted}: {message}"
            if dotted
            else (f"{self.where(path)}: {message}")
        )


def format_path(path: Sequence[str | int]) -> str:
    """``("spec", "rules", 0, "from")`` -> ``spec.rules[0].from``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else str(part))
    return "".join(out)


class _Converter:
    """Turns a composed node tree into plain data, filling in ``lines``."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[PathKey, int] = {}
        self._scalars = yaml.SafeLoader("")  # only its scalar constructors are used

    def convert(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise ConfigError(
                        f"{self.file}:{key_node.start_mark.line + 1}: YAML merge keys (<<) "
                        "are not supported; write the keys out"
                    )
                key = self._scalars.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise ConfigError(
                        f"{self.file}:{key_node.start_mark.line + 1}: mapping keys must be scalars"
                    )
                if key in out:
                    raise ConfigError(
                        f"{self.file}:{key_node.start_mark.line + 1}: duplicate key {key!r}"
                    )
                child: PathKey = (*path, str(key))
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> list[Document]:
    """Every non-empty document in ``text``; a syntax error becomes a ConfigError."""
    documents: list[Document] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{file}:{line}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {exc}") from exc
    for index, node in enumerate(nodes):
        converter = _Converter(file)
        data = converter.convert(node, ())
        if data is None:
            continue
        documents.append(
            Document(
                data=data,
                file=file,
                index=index,
                line=node.start_mark.line + 1,
                lines=converter.lines,
            )
        )
    return documents


def load_file(path: str | Path) -> list[Document]:
    """The documents of one YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from exc
    return parse_yaml(text, str(p))


def iter_yaml_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, and every *.yaml/*.yml under directories, in sorted order
    so loading is deterministic."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.suffix in _YAML_SUFFIXES and f.is_file())
        else:
            yield p


def load_paths(paths: Iterable[str | Path]) -> list[Document]:
    """All documents of all files and directories, collecting every unreadable file
    before raising, so one run reports them all."""
    documents: list[Document] = []
    problems: list[str] = []
    for file in iter_yaml_files(paths):
        try:
            documents.extend(load_file(file))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return documents
