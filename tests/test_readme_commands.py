"""Every shell command of README.md names a real program, real options and real install extras.

Read from README.md's ```bash blocks, so the check cannot drift from it. Training commands are not run (they take
hours); instead each ``python -m <module> [<subcommand>]`` command is asked for its ``--help``, and every option the
README passes must appear in that help text; ``python <script>`` commands must name a file of the project;
``pip install`` lines may only name extras that the package defines. The Python blocks run in
``tests/test_readme.py``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Modules whose command line has subcommands (the first word after the module name).
SUBCOMMAND_MODULES = {"sb3_iris.suite", "sb3_iris.zoo"}
#: Programs that are not ours and need a cluster or another machine to be asked anything.
SKIPPED_PROGRAMS = {"srun", "sleep", "nodes=($(scontrol", "#SBATCH", "optuna", "ruff", "ray"}


def shell_commands() -> list[tuple[int, str]]:
    """(README line, command) of every command of every ```bash block: continuations joined, comments dropped."""
    text = README.read_text()
    commands = []
    for match in BASH_BLOCK.finditer(text):
        first_line = text[: match.start()].count("\n") + 2
        joined = match.group(1).replace("\\\n", " ")
        for offset, line in enumerate(joined.splitlines()):
            if line.startswith("#!") or line.startswith("#SBATCH"):
                continue
            for command in re.split(r"\s*&&\s*", line):
                command = command.split(" #")[0].strip()
                if command and not command.startswith("#"):
                    commands.append((first_line + offset, command))
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command.replace("<out>", "OUT"))


@cache
def help_text(module: str, subcommand: str = "") -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    arguments = [sys.executable, "-m", module, *([subcommand] if subcommand else []), "--help"]
    result = subprocess.run(arguments, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(arguments[1:])} failed:\n{result.stderr[-2000:]}"
    return result.stdout


def used_options(arguments: list[str]) -> list[str]:
    """The option names of a command line (``--name`` and ``-x``; ``--name=value`` gives ``--name``)."""
    return [word.split("=")[0] for word in arguments if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word)]


def python_module_commands() -> list[tuple[int, str]]:
    return [(line, command) for line, command in shell_commands() if command.startswith("python -m ")]


def test_the_readme_has_shell_commands():
    assert len(python_module_commands()) >= 10
    assert any(command.startswith("pip install") for _, command in shell_commands())


@pytest.mark.parametrize(
    ("line", "command"), python_module_commands(), ids=[f"line{line}" for line, _ in python_module_commands()]
)
def test_readme_module_command_accepts_its_options(line: int, command: str):
    arguments = words(command)[2:]  # after "python -m"
    module, rest = arguments[0], arguments[1:]
    if module == "pytest":
        return  # the test command: run by CI itself (.ci/run)
    subcommand = rest[0] if module in SUBCOMMAND_MODULES and rest and not rest[0].startswith("-") else ""
    text = help_text(module, subcommand)
    missing = [option for option in used_options(rest) if not re.search(rf"(^|[\s,\[]){re.escape(option)}\b", text)]
    assert not missing, f"README.md line {line}: `{command}` uses options that `{module} {subcommand} --help` lacks"


def test_readme_scripts_exist():
    scripts = [
        (line, words(command)[1])
        for line, command in shell_commands()
        if command.startswith("python ") and not command.startswith("python -m ")
    ]
    assert scripts, "expected the quickstart script"
    for line, script in scripts:
        assert (ROOT / script).is_file(), f"README.md line {line}: {script} does not exist"


def test_readme_pip_extras_exist():
    extras = set(metadata("sb3-iris").get_all("Provides-Extra") or [])
    assert "all" in extras
    for line, command in shell_commands():
        if not command.startswith("pip install"):
            continue
        for requested in re.findall(r"\[([\w,\s-]+)\]", command):
            for extra in requested.split(","):
                assert extra.strip() in extras, f"README.md line {line}: extra [{extra.strip()}] not in pyproject.toml"


def test_other_programs_are_known():
    """Every command is checked above or named here as a program this machine cannot ask (cluster tools)."""
    for line, command in shell_commands():
        program = command.split()[0]
        assert program in {"python", "pip"} | SKIPPED_PROGRAMS, f"README.md line {line}: unchecked program {program}"
