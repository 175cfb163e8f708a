"""Running commands on this machine, without SSH, through the same shell strings."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import threading
import time
from typing import IO, Any

from forge.errors import CommandTimeout, shown
from forge.transport.base import Command, CommandResult, OutputLimit, Transport, to_script

_CHUNK = 1 << 20


class LocalTransport(Transport):
    """Runs ``sh -c SCRIPT`` here: the same string a remote login shell would get. A command
    that runs past its timeout is ended with everything it started (its process group); its
    output is bounded like a remote command's."""

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
        sink = OutputLimit(self.name)
        source = io.BytesIO(stdin) if stdin is not None else None
        result = self._run(command, source=source, sink=sink, timeout=timeout)
        result = dataclasses.replace(result, stdout=sink.text())
        return result.check() if check else result

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        return self._run(command, source=source, sink=sink, timeout=timeout)

    def _run(self, command: Command, *, source: IO[bytes] | None, sink: Any, timeout: float | None) -> CommandResult:
        script = to_script(command)
        timeout = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        proc = subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: ended as a whole on timeout
        )
        err = OutputLimit(self.name, keep="tail")
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_pump, args=(proc.stdout, sink, errors), daemon=True)]
        threads.append(threading.Thread(target=_pump, args=(proc.stderr, err, errors), daemon=True))
        if source is not None:
            threads.append(threading.Thread(target=_feed, args=(source, proc.stdin), daemon=True))
        for t in threads:
            t.start()
        try:
            proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandTimeout(self.name, f"`{shown(script)}` ran past its timeout of {timeout:g} s") from None
        except BaseException:
            _kill_group(proc)
            raise
        for t in threads:
            t.join()
        if errors:  # the output went past its bound
            raise errors[0]
        return CommandResult(self.name, script, proc.returncode, "", err.text(), time.monotonic() - started)

    def close(self) -> None:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _pump(pipe: IO[bytes] | None, sink: Any, errors: list[BaseException]) -> None:
    assert pipe is not None
    try:
        while chunk := pipe.read1(_CHUNK):  # type: ignore[attr-defined]
            if sink is not None:
                sink.write(chunk)
    except Exception as e:  # the sink refused (output past its bound): the command gets SIGPIPE
        errors.append(e)
    finally:
        pipe.close()


def _feed(source: IO[bytes], dest: IO[bytes] | None) -> None:
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
