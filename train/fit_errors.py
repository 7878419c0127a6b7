"""`chimera fit|validate` config errors in one line: the full key and what was wrong with it.

jsonargparse reports a bad nested value as a tree: every Union it tried, each alternative's
failure, and the whole given config as a dump. The user needs one leaf of that tree — the key
(`model.init_args.model.init_args.connector.init_args.depth`) and its problem (`expected int,
got two`). `condense` finds that leaf; CHIMERA_DEBUG=1 (or `--debug`) keeps jsonargparse's report.
"""

from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from train.cli_errors import EXIT_STATUS

KEY = re.compile(r'Parser key "([^"]+)":')
NOISE = re.compile(
    r"^(- )?(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value( type)?: |"
    r"Expected a <class 'NoneType'>|Import path .* does not correspond to a subclass of )")
CLASS = re.compile(r"^(- )?Problem with given class_path '[^']*':$")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def condense(message: str) -> str:
    """`key: problem` from jsonargparse's error tree; the message itself when it is not a tree."""
    lines = message.strip().splitlines()
    if len(lines) < 2:
        return " ".join(message.split())
    stack: list[tuple[int, list[str]]] = []  # (indent, key parts) of the enclosing entries
    for line in lines:
        indent, text = len(line) - len(line.lstrip()), line.strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parts = ["init_args"] if CLASS.match(text) else []
        for i, found in enumerate(KEY.finditer(text)):
            nested = i > 0 or found.start() > 0  # "... a callable class: Parser key "depth":"
            parts += (["init_args"] if nested else []) + [found.group(1)]
        rest = KEY.sub("", text).split(": ", 1)[-1].strip() if KEY.search(text) else text
        if parts:
            stack.append((indent, parts))
        if rest and not parts and not NOISE.match(rest):
            key = ".".join(p for _, ps in stack for p in ps)
            return f"{key}: {_plain(rest)}" if key else _plain(rest)
    return " ".join(message.split())


def _plain(problem: str) -> str:
    problem = problem.split(". Got value: Namespace(")[0]
    return re.sub(r"<class '([\w.]+)'>", r"\1", problem)


class ChimeraArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, but a config error exits with one line on stderr (status 2)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("CHIMERA_DEBUG", "") not in ("", "0"):
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.split()
        command = f"chimera {prog[-1]}" if prog and prog[-1] in SUBCOMMANDS else "chimera"
        sys.stderr.write(f"{command}: {condense(message)}\n")
        sys.exit(EXIT_STATUS)
