"""The dispatcher: every sub-command registers, user errors are one line, exit 2."""

from __future__ import annotations

import argparse

import pytest

from meshlet.cli import main as cli
from meshlet.errors import ConfigError


def test_every_command_module_registers_its_sub_command() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    expected = {name.rsplit(".", 1)[1] for name in cli.COMMAND_MODULES}
    assert expected <= set(sub.choices)


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: meshlet" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("meshlet ")


def test_mesh_error_is_one_line_per_problem_without_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(_args: argparse.Namespace) -> int:
        raise ConfigError(["a.yaml:3: x: bad", "a.yaml:9: y: worse"])

    real = cli.build_parser

    def patched() -> argparse.ArgumentParser:
        parser = real()
        parser.set_defaults(handler=failing)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "meshlet: error: a.yaml:3: x: bad",
        "meshlet: error: a.yaml:9: y: worse",
    ]
    assert "Traceback" not in err
