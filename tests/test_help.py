"""Help that teaches: every command documents every option and ends with a runnable example; `--version`; the
shipped profiles are found from any working directory."""

from __future__ import annotations

import json

import pytest
import typer

from amoeba_search import __version__
from amoeba_search.cli import app
from amoeba_search.profiling.store import ProfileStore
from tests.test_cli import amoeba


def commands(group, prefix: str = "amoeba"):
    """(path, command) for every runnable command, sub-commands and group callbacks with their own options included."""
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):              # a group (typer may bring its own click)
            if command.invoke_without_command:
                yield path, command
            yield from commands(command, path)
        else:
            yield path, command


COMMANDS = list(commands(typer.main.get_command(app)))


def test_every_command_is_covered():
    names = {path for path, _ in COMMANDS}
    assert {"amoeba search", "amoeba pareto", "amoeba profile", "amoeba profile import", "amoeba plot lut",
            "amoeba plot pareto", "amoeba predict", "amoeba demo", "amoeba finetune", "amoeba evaluate"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_documented_and_there_is_an_example(path, command):
    assert command.help, f"{path} has no description"
    undocumented = [p.name for p in command.params if getattr(p, "param_type_name", "") == "option" and not p.help]
    assert not undocumented, f"{path}: undocumented options {undocumented}"
    assert "Examples" in (command.epilog or ""), f"{path} has no example"
    examples = [line for line in command.epilog.splitlines() if line.startswith(f"{path} ") or line == path]
    assert examples, f"{path}: no example of this command"
    options = {o for p in command.params for o in p.opts}
    for line in examples:
        used = [word.split("=")[0] for word in line[len(path):].split() if word.startswith("--")]
        assert set(used) <= options, f"{path}: the example uses unknown options {set(used) - options}"


def test_version():
    run = amoeba("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"amoeba_search {__version__}"


def test_help_says_ms_and_keeps_brackets():
    run = amoeba("predict", "--help")
    assert "microseconds" not in run.stdout and "(ms)" in run.stdout


def test_predict_finds_the_shipped_profile_from_any_directory(tmp_path):
    shipped = ProfileStore().shipped / "amd-epyc" / "torch-eager"
    if not (shipped / "lut.csv").is_file():
        pytest.skip("no shipped amd-epyc/torch-eager profile in this checkout")
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"layers": list(range(20)), "heads": 6, "mlp_channels": 1152}))
    run = amoeba("predict", "--device", "amd-epyc", "--flow", "torch-eager", "--subnet", spec, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "decode C=128" in run.stdout and "predicted ms" in run.stdout
