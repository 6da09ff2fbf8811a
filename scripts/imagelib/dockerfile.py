"""The Dockerfile as data: its global ARGs and its stages, each with its base and its
instructions (continuation lines joined, comments dropped), so that tests can check what
each target holds without a container engine."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # `AS name`, or its index for an unnamed stage
    base: str  # what FROM names: an image, or an earlier stage
    instructions: tuple[tuple[str, str], ...]  # (INSTRUCTION, arguments), FROM excluded

    def args(self, instruction: str) -> list[str]:
        """The arguments of every `instruction` of this stage, in order."""
        return [args for name, args in self.instructions if name == instruction]


@dataclasses.dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]  # ARG name -> default ("" when none), before the first FROM
    stages: dict[str, Stage]  # in file order; the last one is the default target

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, the first base first."""
        stage = self.stages[name]
        return [*(self.chain(stage.base) if stage.base in self.stages else []), stage]

    def env(self, name: str) -> dict[str, str]:
        """The ENV a target ends with, as written (`$VAR` not expanded), inherited stages included."""
        return {key: value for stage in self.chain(name) for args in stage.args("ENV")
                for key, value in (word.split("=", 1) for word in shlex.split(args))}


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    stages: list[tuple[str, str, list[tuple[str, str]]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            base, name = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I).groups()
            stages.append((name or str(len(stages)), base, []))
        elif stages:
            stages[-1][2].append((instruction, args))
        elif instruction == "ARG":
            key, _, value = args.partition("=")
            global_args[key] = "".join(shlex.split(value))  # ARG X="" is the empty string
    return Dockerfile(global_args, {name: Stage(name, base, tuple(body)) for name, base, body in stages})
