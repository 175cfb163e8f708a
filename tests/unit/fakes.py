"""The one fake transport of the unit tests: scripted answers, recorded commands.

Each command is answered by the first rule whose pattern occurs in the rendered command (the
string a real transport would run); a command no rule answers fails the test, so a unit test
never reaches a real shell by accident. :func:`session` wraps it as the
:class:`~forge.session.HostSession` fleet operations are given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO

from forge.inventory import Host
from forge.session import HostSession
from forge.transport.base import Command, CommandResult, Transport, to_script


@dataclass
class Rule:
    pattern: str
    status: int = 0
    stdout: str = ""
    stderr: str = ""
    sink: bytes = b""  # what a stream writes to its sink
    raises: BaseException | None = None
    delay_s: float = 0.0


class FakeTransport(Transport):
    def __init__(self, name: str = "gpu1") -> None:
        self.name = name
        self.rules: list[Rule] = []
        self.scripts: list[str] = []
        self.stdin = b""
        self.closed = False

    def on(self, pattern: str, **answer: object) -> FakeTransport:
        """Answer commands containing ``pattern`` (see :class:`Rule`); returns self."""
        self.rules.append(Rule(pattern, **answer))  # type: ignore[arg-type]
        return self

    def _answer(self, command: Command) -> tuple[str, Rule]:
        script = to_script(command)
        self.scripts.append(script)
        for rule in self.rules:
            if rule.pattern in script:
                if rule.delay_s:
                    time.sleep(rule.delay_s)
                if rule.raises is not None:
                    raise rule.raises
                return script, rule
        raise AssertionError(f"{self.name}: no fake answer for {script!r}")

    def run(
        self, command: Command, *, timeout: float | None = None, stdin: bytes | None = None, check: bool = False
    ) -> CommandResult:
        script, rule = self._answer(command)
        result = CommandResult(self.name, script, rule.status, rule.stdout, rule.stderr, 0.0)
        return result.check() if check else result

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        script, rule = self._answer(command)
        if source is not None:
            self.stdin = source.read()
        if sink is not None and rule.sink:
            sink.write(rule.sink)
        return CommandResult(self.name, script, rule.status, "", rule.stderr, 0.0)

    def close(self) -> None:
        self.closed = True


def session(host: Host, fake: FakeTransport | None = None) -> HostSession:
    return HostSession(host, fake or FakeTransport(host.name))
