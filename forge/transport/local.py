"""Running commands on this machine, without SSH, through the same shell strings."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import IO

from forge.errors import CommandTimeout
from forge.transport.base import Command, CommandResult, Transport, to_script

_CHUNK = 1 << 20


class LocalTransport(Transport):
    """Runs ``sh -c SCRIPT`` here: the same string a remote login shell would get."""

    def __init__(self, name: str = "local", *, command_timeout: float = 60.0) -> None:
        self.name = name
        self.command_timeout = command_timeout

    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        script = to_script(command)
        timeout = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            proc = subprocess.run(
                ["sh", "-c", script],
                input=stdin,
                capture_output=True,
                timeout=timeout or None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(self.name, f"`{script}` ran past its timeout of {timeout:g} s") from None
        result = CommandResult(
            host=self.name,
            command=script,
            exit_status=proc.returncode,
            stdout=proc.stdout.decode("utf-8", "replace"),
            stderr=proc.stderr.decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )
        return result.check() if check else result

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        script = to_script(command)
        timeout = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        proc = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        err: list[bytes] = []
        threads = [threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]  # type: ignore[union-attr]
        if source is not None:
            threads.append(threading.Thread(target=_pump, args=(source, proc.stdin), daemon=True))
        for t in threads:
            t.start()
        while chunk := proc.stdout.read(_CHUNK):
            if sink is not None:
                sink.write(chunk)
        try:
            proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise CommandTimeout(self.name, f"`{script}` ran past its timeout of {timeout:g} s") from None
        for t in threads:
            t.join()
        return CommandResult(
            host=self.name,
            command=script,
            exit_status=proc.returncode,
            stdout="",
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration_s=time.monotonic() - started,
        )

    def close(self) -> None:
        pass


def _pump(source: IO[bytes], dest: IO[bytes] | None) -> None:
    assert dest is not None
    try:
        while data := source.read(_CHUNK):
            dest.write(data)
    except BrokenPipeError:
        pass
    finally:
        try:
            dest.close()
        except BrokenPipeError:
            pass
