"""Every command line README.md shows is one the tools take today: `cmglab` sub-commands and options that exist,
dsregcmd actions and options its --help lists, ccmsetup command lines its parser accepts, and the README's list of
ccmsetup's parameters, properties and exit codes is the one ccmsetup has (a newcomer copies these lines)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from cmglab.agent.ccmsetup.cmdline import PROPERTIES, SWITCHES, USAGE, parse
from cmglab.tools.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
TOOLS = ("cmglab", "dsregcmd", "ccmsetup", "ccmexec")


def command_lines(tool: str) -> list[str]:
    """The README's command lines that run `tool`: in code blocks (a line, or after `&&` / `;`, comments cut,
    continuation lines joined) and in inline code that starts with the tool's name."""
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        if "│" in block:  # the diagram: names, not command lines
            continue
        for line in block.replace("\\\n", " ").splitlines():
            code = re.split(r"\s#\s|^#", line, maxsplit=1)[0]
            found += [p.strip() for p in re.split(r"&&|;", code) if p.strip().startswith(f"{tool} ")]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(f"{tool} ")]
    assert found, f"the README shows no {tool} command"
    return sorted(set(found))


def words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an inline span with a lone quote: its words are still what the reader copies
        return line.split()


def test_cmglab_commands_name_real_sub_commands_and_options() -> None:
    root: Any = typer.main.get_command(app)
    wrong = []
    for line in command_lines("cmglab"):
        command, rest, path = root, words(line)[1:], ["cmglab"]
        while hasattr(command, "commands") and rest and rest[0] in command.commands:
            path.append(rest[0])
            command = command.commands[rest.pop(0)]
        if hasattr(command, "commands"):
            if rest and not rest[0].startswith("-"):
                wrong.append(f"{line}: {' '.join(path)} has no sub-command {rest[0]!r}")
            continue
        if command.context_settings.get("ignore_unknown_options"):  # it hands its options on (Locust's)
            continue
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        wrong += [
            f"{line}: {' '.join(path)} has no option {w.split('=', 1)[0]}"
            for w in rest
            if w.startswith("--") and w.split("=", 1)[0] not in options
        ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("tool", ["dsregcmd", "ccmexec"])
def test_agent_command_lines_use_actions_and_options_their_help_lists(tool: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", f"cmglab.agent.{tool}", "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    listed = set(re.findall(r"(?<![\w/])(/\w+|--[\w-]+)", shown.stdout))
    wrong = [
        f"{line}: {w} is not in `{tool} --help`"
        for line in command_lines(tool)
        for w in words(line)[1:]
        if re.fullmatch(r"/\w+|--[\w-]+", w.split("=", 1)[0]) and w.split("=", 1)[0] not in listed
    ]
    assert not wrong, "\n".join(wrong)


def test_ccmsetup_command_lines_parse() -> None:
    for line in command_lines("ccmsetup"):
        argv = words(line)[1:]
        if any(w.startswith("/") or "=" in w for w in argv):  # a command line, not prose naming ccmsetup
            parse(argv)


def test_readme_lists_ccmsetup_parameters_properties_and_exit_codes_as_ccmsetup_has_them() -> None:
    said = " ".join(README.split("ccmsetup takes the real parameters and properties", 1)[1].split("\n\n", 1)[0].split())
    named = set(re.findall(r"`/(\w+):?`", said))
    props = set(re.findall(r"`([A-Z]+)=`", said))
    assert named == set(SWITCHES), f"README names {sorted(named)}, ccmsetup takes {sorted(SWITCHES)}"
    assert props == set(PROPERTIES), f"README names {sorted(props)}, ccmsetup takes {sorted(PROPERTIES)}"
    usage = " ".join(USAGE.split())
    assert all(f"/{s}" in usage for s in SWITCHES) and all(f"{p}=" in usage for p in PROPERTIES), USAGE
    codes = re.search(r"exit codes \(([^)]*)\)", said)
    assert codes, said
    for code, meaning in re.findall(r"(\d+) ([a-z ]+?)(?:[,:]|$)", codes[1]):
        assert f"{code} {meaning}" in usage, f"README: {code} {meaning}; ccmsetup --help: {USAGE}"


def test_every_setting_the_readme_names_is_one_the_lab_reads() -> None:
    """Each `CMGLAB_*` the README names is a field of a settings class (its prefix + the field's name), a name the
    code reads itself, or one docker-compose.yml interpolates; `CMGLAB_X_*` names a family of them."""
    from cmglab.agent.settings import AgentSettings
    from cmglab.core.settings import Settings
    from cmglab.services.cmg.settings import CMGSettings
    from cmglab.services.cmg_connection_point.settings import CPSettings

    root = Path(__file__).resolve().parents[1]
    known = {
        str(cls.model_config.get("env_prefix", "")) + field.upper()
        for cls in (Settings, AgentSettings, CMGSettings, CPSettings)
        for field in cls.model_fields
    }
    sources = [p.read_text() for p in (root / "cmglab").rglob("*.py")] + [(root / "docker-compose.yml").read_text()]
    known |= {name for text in sources for name in re.findall(r"CMGLAB_[A-Z0-9_]*[A-Z0-9]", text)}
    named = set(re.findall(r"CMGLAB_[A-Z0-9_]*[A-Z0-9](?:_\*)?", README))
    unknown = [
        n for n in sorted(named) if not (any(k.startswith(n[:-1]) for k in known) if n.endswith("*") else n in known)
    ]
    assert not unknown, unknown
