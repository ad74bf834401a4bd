"""The manual (docs/ and the README) against the code: every `baldflow` command and option it
names exists in the CLI's parser, the errors it quotes are what the CLI prints, and its
acquisition example runs as written. The strict MkDocs build in `make lint` checks the links;
tests/test_api.py runs the Python API page's example and tests/test_mlflow_ui.py checks what
the results page says of the MLflow UI.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from baldflow.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
# A command as the shell runs it: `baldflow WORD ...`, or a path to it (.venv/bin/baldflow),
# after any environment assignments. Placeholders (COMMAND, <campaign>) and the importable
# names (baldflow.app, baldflow/config.py, baldflow-<campaign>) do not match.
ASSIGNMENTS = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*")
COMMAND = re.compile(r"^(?:\S*/)?baldflow\s+([a-z][a-z-]*)(.*)$")


def _code(text: str) -> list[str]:
    """The shell lines of a page: the lines of its fenced blocks other than Python and YAML
    (comments dropped), then the inline code spans of the prose outside them."""
    lines = []
    for language, block in FENCE.findall(text):
        if language.strip() in ("python", "yaml"):
            continue
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            lines.append(line.removeprefix("$ "))
    prose = FENCE.sub("", text)
    lines += INLINE.findall(prose)
    return lines


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page, command, the words after it) for every `baldflow` command the pages name."""
    found = []
    for page in PAGES:
        for line in _code(page.read_text()):
            # Shell separators have spaces around them here; `up|status|down` is one word.
            for segment in re.split(r"\s(?:\|\||&&|\||&|;)\s|\$\(", line):
                match = COMMAND.match(ASSIGNMENTS.sub("", segment.strip()))
                if match:
                    found.append((page.name, match.group(1), match.group(2).split()))
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    """A command's sub-commands, or the choices of its first positional (`stack up|...`)."""
    names = set(_subparsers(parser))
    for action in parser._actions:
        if not action.option_strings and action.choices and not names:
            names = {str(choice) for choice in action.choices}
            break
    return names


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_docs_name_commands():
    named = {command for _, command, _ in documented_commands()}
    # The scan finds what the pages show: if it found nothing, it would check nothing.
    assert {"run", "history", "show", "diff", "report", "label", "stack", "verify"} <= named


def test_every_baldflow_command_in_the_docs_is_a_command_of_the_cli():
    commands = _subparsers(build_parser())
    problems = []
    for page, command, words in documented_commands():
        if command not in commands:
            problems.append(f"{page}: baldflow {command} is not a command")
            continue
        parser = commands[command]
        # Down through nested sub-commands (`stack user add`), as far as the words name them.
        rest = list(words)
        while rest and re.fullmatch(r"[a-z][a-z|-]*", rest[0]) and _choices(parser):
            choices, nested = _choices(parser), None
            for word in rest.pop(0).split("|"):
                if word not in choices:
                    problems.append(f"{page}: baldflow {command} {word} is not a sub-command")
                elif nested is None and word in _subparsers(parser):
                    nested = _subparsers(parser)[word]  # `up|status|down`: up's options
            if nested is None:
                break
            parser = nested
        known = _options(parser)
        for word in words:
            option = re.match(r"[(\[]*(--[a-z][a-z-]*)", word)
            if option and option.group(1) not in known:
                problems.append(f"{page}: baldflow {command} has no option {option.group(1)}")
    assert not problems, "\n".join(sorted(set(problems)))


def documented_errors() -> list[tuple[str, list[str], str]]:
    """(page, argv, the message) of each `$ baldflow ...` line a block follows with an error."""
    found = []
    for page in PAGES:
        for _, block in FENCE.findall(page.read_text()):
            lines = block.splitlines()
            for line, after in zip(lines, lines[1:], strict=False):
                if line.startswith("$ baldflow ") and re.match(r"\w+Error: ", after):
                    found.append((page.name, line.removeprefix("$ baldflow ").split(), after))
    return found


def test_the_readme_links_to_files_that_exist():
    # The README is not part of the MkDocs build: its links to the pages are checked here.
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert "docs/architecture.md" in local
    assert [link for link in local if not (ROOT / link).is_file()] == []


def test_the_docs_quote_errors():
    assert len(documented_errors()) >= 2


@pytest.mark.parametrize("page, argv, message", documented_errors())
def test_a_quoted_error_is_what_the_cli_prints(tmp_path, page, argv, message):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*argv, "--workspace", str(tmp_path / "ws")])
    assert code == 2
    # "..." in the docs stands for the part of the message they leave out.
    pattern = ".*?".join(re.escape(part) for part in message.split("..."))
    assert re.fullmatch(pattern, err.getvalue().strip()), (page, err.getvalue())
    assert not (tmp_path / "ws").exists()  # refused before any work


def test_the_acquisition_example_runs_as_written():
    text = (ROOT / "docs" / "acquisition.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "docs/acquisition.md", "exec"), namespace)
    batch = namespace["batch"]
    assert len(set(batch.indices.tolist())) == 10
    assert out.getvalue().strip()
