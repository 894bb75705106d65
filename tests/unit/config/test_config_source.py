"""YAML sources keep file:line for every value, and fail with one line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from meshlet.config.source import format_path, load_paths, parse_yaml
from meshlet.config.validation import validate_document
from meshlet.errors import ConfigError

TWO_DOCS = """\
apiVersion: v1
kind: A
spec:
  rules:
    - from: x
    - from: y
      to: z
---
# a comment-only document is skipped
---
kind: B
"""


def test_lines_are_recorded_per_path() -> None:
    docs = parse_yaml(TWO_DOCS, "p.yaml")
    assert [d.index for d in docs] == [0, 2]
    first = docs[0]
    assert first.line_of(("spec", "rules", 1, "to")) == 7
    assert first.line_of(("spec", "rules", 0)) == 5
    # An unknown path falls back to its nearest known ancestor.
    assert first.line_of(("spec", "rules", 1, "nope", 3)) == 6
    assert docs[1].where() == "p.yaml:11"


def test_problem_formats_path_and_location() -> None:
    doc = parse_yaml(TWO_DOCS, "p.yaml")[0]
    assert doc.problem(("spec", "rules", 1, "to"), "bad") == "p.yaml:7: spec.rules[1].to: bad"
    assert format_path(()) == ""
    assert format_path(("a", 0, "b")) == "a[0].b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a: 1\na: 2\n", "p.yaml:2: duplicate key 'a'", id="duplicate-key"),
        pytest.param("a: [1,\n", "p.yaml:2: invalid YAML", id="syntax"),
        pytest.param("x: &a {k: 1}\ny:\n  <<: *a\n", "p.yaml:3: YAML merge keys", id="merge-key"),
    ],
)
def test_bad_yaml_names_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "p.yaml")
    assert str(info.value).startswith(expected)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int
    name: str


def test_validation_errors_point_at_the_field() -> None:
    doc = parse_yaml("name: a\nport: lots\ncolour: red\n", "c.yaml")[0]
    with pytest.raises(ConfigError) as info:
        validate_document(_Spec, doc)
    problems = info.value.problems
    assert any(p.startswith("c.yaml:2: port:") for p in problems)
    assert "c.yaml:3: colour: unknown field (not supported by meshlet)" in problems


def test_load_paths_reports_every_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("a: 1\n")
    (tmp_path / "bad.yml").write_text("a: [\n")
    (tmp_path / "notes.txt").write_text("not yaml: [\n")
    with pytest.raises(ConfigError) as info:
        load_paths([tmp_path, tmp_path / "missing.yaml"])
    text = str(info.value)
    assert "bad.yml:2: invalid YAML" in text
    assert "missing.yaml: no such file" in text
    assert "notes.txt" not in text
