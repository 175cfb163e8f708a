"""Running commands on a remote host over SSH: paramiko channels on one kept connection.

Bulk streams (:meth:`SSHTransport.stream`: image transfers, build contexts) go through the
OpenSSH client instead when it is installed, along the same route and under the same host
key files and rules (:mod:`forge.transport.openssh`); ``FORGE_SSH_STREAM=paramiko`` keeps
them on paramiko.

The route (jump hosts, then the host; :mod:`forge.transport.route`) comes from the inventory
and the OpenSSH client config. Every hop is a paramiko client whose host key forge checks
(:mod:`forge.transport.hostkeys`); a jump hop carries the next one in a ``direct-tcpip``
channel. forge adds TCP_NODELAY on its own socket (44.8 ms -> 2.7 ms per command on an open
connection) and streams binary data over raw channels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

import paramiko

from forge import shell
from forge.errors import CommandTimeout, ConnectError, ForgeError, HostKeyError, shown
from forge.inventory import Host
from forge.transport import hostkeys, kept, openssh
from forge.transport.base import (
    MAX_OUTPUT,
    MAX_STDERR,
    Command,
    CommandResult,
    OutputLimit,
    Transport,
    to_script,
    with_timeout,
)
from forge.transport.route import Hop, Route, resolve

_CHUNK = 1 << 20
# paramiko logs a failed handshake (e.g. no SSH banner) with its traceback from its own thread;
# without a handler Python prints that to stderr. forge reports the error itself.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
log = logging.getLogger(__name__)


#: Why an SSH server refused to open a forwarded connection (RFC 4254, section 5.1).
_OPEN_FAILURES = {
    1: "it refused to forward the connection (AllowTcpForwarding is off there?)",
    2: "the connection failed (is the host up and its sshd running?)",
    3: "it does not forward connections",
    4: "it is out of resources",
}


def _channel_failure(e: BaseException) -> str:
    """A person's reading of a failed ``direct-tcpip`` open, not paramiko's repr."""
    if isinstance(e, paramiko.ChannelException):
        return _OPEN_FAILURES.get(e.code, f"it refused the connection (code {e.code})")
    if isinstance(e, EOFError):
        return "the connection to it closed"
    return str(e) or type(e).__name__


class SSHTransport(Transport):
    """One SSH connection to one host (through its jump hosts), opened on first use and kept
    for later commands."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.name = host.name
        self._clients: list[paramiko.SSHClient] = []  # one per hop; the last one is the host
        self._route: Route | None = None
        self._lock = threading.Lock()
        self._streams: set[subprocess.Popen[bytes]] = set()  # ssh processes of running streams
        self._kept: dict[str, kept.KeptLoop] = {}  # commands run again, by their script
        self._asked: set[str] = set()  # scripts run_again has seen (a loop from the second run on)
        self._unkept: set[str] = set()  # scripts whose loop broke: run the usual way from then on
        self._opening: set[str] = set()  # scripts whose loop a caller is starting now
        self._ended = False  # end(): no connection opens again

    # ------------------------------------------------------------------ connection

    @property
    def route(self) -> Route:
        if self._route is None:
            self._route = resolve(self.host)
        return self._route

    def _connect(self) -> paramiko.Transport:
        with self._lock:
            t = self._clients[-1].get_transport() if self._clients else None
            if t is not None and t.is_active():
                return t
            if self._ended:
                raise ConnectError(self.name, "forge closed its connection to the host: the run is ending")
            self._close_clients()
            self._clients = self._open()
            t = self._clients[-1].get_transport()
            assert t is not None
            return t

    def _open(self) -> list[paramiko.SSHClient]:
        hops = self.route.hops
        clients: list[paramiko.SSHClient] = []
        try:
            sock: Any = None
            for i, hop in enumerate(hops):
                if sock is None:
                    sock = self._first_socket(hop)
                clients.append(self._login(hop, sock))
                if i + 1 < len(hops):
                    sock = self._tunnel(clients[-1], hop, hops[i + 1])
        except BaseException:
            for c in reversed(clients):
                c.close()
            raise
        return clients

    def _first_socket(self, hop: Hop) -> Any:
        h = self.host
        if hop.proxy_command:
            try:
                return paramiko.ProxyCommand(hop.proxy_command)
            except (OSError, paramiko.SSHException) as e:
                raise ConnectError(h.name, f"the ProxyCommand for {hop.label} failed to start: {e}") from e
        try:
            return _nodelay_socket(hop.hostname, hop.port, h.connect_timeout)
        except TimeoutError as e:
            raise ConnectError(h.name, f"timed out connecting to {_via(hop, h)} after {h.connect_timeout:g} s") from e
        except ConnectionRefusedError as e:
            raise ConnectError(h.name, f"connection refused by {_via(hop, h)} (is sshd running?)") from e
        except socket.gaierror as e:
            raise ConnectError(h.name, f"cannot resolve host name {hop.hostname!r}: {e.strerror}") from e
        except OSError as e:
            raise ConnectError(h.name, f"cannot connect to {_via(hop, h)}: {e.strerror or e}") from e

    def _tunnel(self, client: paramiko.SSHClient, hop: Hop, nxt: Hop) -> paramiko.Channel:
        t = client.get_transport()
        assert t is not None
        try:
            return t.open_channel(
                "direct-tcpip", (nxt.hostname, nxt.port), ("127.0.0.1", 0), timeout=self.host.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectError(
                self.name, f"{hop.label} ({hop.where}) could not reach {_via(nxt, self.host)}: {_channel_failure(e)}"
            ) from e

    def _login(self, hop: Hop, sock: Any) -> paramiko.SSHClient:
        h = self.host
        client = paramiko.SSHClient()
        known = hostkeys.prepare(client, hop, host=h.name)
        pkey, others = _identities(hop.identity_files)
        # With a socket given, the host name and port only name the key to look up.
        name, port = (hop.key_alias, 22) if hop.key_alias else (hop.hostname, hop.port)
        try:
            client.connect(
                name,
                port=port,
                username=hop.user,
                pkey=pkey,
                key_filename=cast(str, others) if others else None,  # paramiko takes a list
                look_for_keys=not hop.identity_files,
                allow_agent=True,
                sock=sock,
                timeout=h.connect_timeout,
                banner_timeout=h.connect_timeout,
                auth_timeout=h.connect_timeout,
                transport_factory=_transport,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise hostkeys.bad_key_error(h.name, hop, e, known) from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise ConnectError(
                h.name,
                f"authentication failed for {hop.user}@{_via(hop, h)}: {e}",
                hint="forge uses SSH keys and the agent only; check identity_file and "
                "that the public key is in the remote authorized_keys",
            ) from e
        except TimeoutError as e:
            client.close()
            raise ConnectError(h.name, f"timed out talking to {_via(hop, h)} after {h.connect_timeout:g} s") from e
        except (OSError, paramiko.SSHException, EOFError) as e:
            t = client.get_transport()
            banner = bool(t is not None and t.remote_version)
            client.close()
            if not banner:
                raise ConnectError(
                    h.name,
                    f"no SSH server answered at {_via(hop, h)} within {h.connect_timeout:g} s (no SSH banner)",
                    hint="is it the SSH port, and is the server overloaded?",
                ) from e
            raise ConnectError(h.name, f"cannot connect to {_via(hop, h)}: {e or type(e).__name__}") from e
        t = client.get_transport()
        if isinstance(t, _Transport):
            t.idle()
        return client

    def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for c in reversed(clients):
            c.close()

    def end(self) -> None:
        with self._lock:
            self._ended = True
        self.close()

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams)
            self._kept = {}  # their channels end with the connection
            self._unkept = set()  # a loop that broke with it may work on the next one
            self._close_clients()
        for proc in streams:  # a closed transport ends its streams too
            openssh.end(proc)

    def _track(self, done: subprocess.Popen[bytes] | None, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if done is not None:
                self._streams.discard(done)
                return
            if not self._ended:
                self._streams.add(proc)
                return
        openssh.end(proc)  # started as the run ended: end() did not see it

    # ------------------------------------------------------------------ commands

    def host_key(self) -> tuple[str, str] | None:
        key = self._connect().get_remote_server_key()
        return key.get_name(), key.get_base64()

    def _channel(self, timeout: float | None) -> paramiko.Channel:
        transport = self._connect()
        try:
            return transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.close()
            raise ConnectError(self.name, f"the SSH connection broke: {e}") from e

    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = False,
    ) -> CommandResult:
        source = io.BytesIO(stdin) if stdin is not None else None
        sink = OutputLimit(self.name)
        result = self._exec(command, source=source, sink=sink, timeout=timeout)
        result = dataclasses.replace(result, stdout=sink.text())
        return result.check() if check else result

    def run_again(self, command: Command, *, timeout: float | None = None) -> CommandResult:
        """From its second run on, a command is served by a loop kept on the host
        (:mod:`forge.transport.kept`): one message each way instead of a channel's dozen. A loop
        that breaks is dropped and the command run the usual way (from then on)."""
        script = to_script(command)
        timeout = self.host.command_timeout if timeout is None else timeout
        wrapped = with_timeout(script, timeout)
        with self._lock:
            again = wrapped in self._asked and wrapped not in self._unkept
            self._asked.add(wrapped)
            loop = self._kept.get(wrapped)
            # One caller starts the loop; another asking meanwhile runs its command the usual
            # way (two starting at once would each leave a loop on the host).
            opening = again and loop is None and wrapped not in self._opening
            if opening:
                self._opening.add(wrapped)
        if not again or (loop is None and not opening):
            return self.run(command, timeout=timeout)
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        try:
            if loop is None:
                loop = self._keep(wrapped)
            if not loop.lock.acquire(blocking=False):  # in use by another caller
                return self.run(command, timeout=timeout)
            try:
                status, out, err = loop.call(deadline, limit=MAX_OUTPUT + MAX_STDERR)
            finally:
                loop.lock.release()
        except TimeoutError:
            self._drop(wrapped)
            raise CommandTimeout(self.name, f"`{shown(script)}` ran past its timeout of {timeout:g} s") from None
        except (kept.KeptReplyError, paramiko.SSHException, EOFError, OSError) as e:
            log.debug("%s: the kept loop broke (%s); running the command anew", self.name, e)
            self._drop(wrapped, broken=True)
            return self.run(command, timeout=timeout)
        stdout, stderr = OutputLimit(self.name), OutputLimit(self.name, keep="tail")
        stdout.write(out)
        stderr.write(err)
        return CommandResult(self.name, script, status, stdout.text(), stderr.text(), time.monotonic() - started)

    def _keep(self, wrapped: shell.Script) -> kept.KeptLoop:
        try:
            chan = self._channel(self.host.connect_timeout)
            try:
                chan.exec_command(kept.loop_command(wrapped))
            except BaseException:
                chan.close()
                raise
            loop = kept.KeptLoop(self.name, chan)
            with self._lock:
                self._kept[wrapped] = loop
            return loop
        finally:
            with self._lock:
                self._opening.discard(wrapped)

    def _drop(self, wrapped: str, *, broken: bool = False) -> None:
        with self._lock:
            loop = self._kept.pop(wrapped, None)
            if broken:
                self._unkept.add(wrapped)
        if loop is not None:
            loop.close()

    def stream(
        self,
        command: Command,
        *,
        source: IO[bytes] | None = None,
        sink: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Bulk data: through the OpenSSH client where installed, else a paramiko channel."""
        ssh = openssh.client()
        if ssh is None:
            return self._exec(command, source=source, sink=sink, timeout=timeout)
        self._connect()  # every hop's key is checked (and, under accept-new, recorded) by forge first
        if not openssh.usable(self.route):
            return self._exec(command, source=source, sink=sink, timeout=timeout)
        timeout = self.host.command_timeout if timeout is None else timeout
        script = to_script(command)
        return openssh.stream(
            self.host,
            openssh.argv(self.route, with_timeout(script, timeout), ssh=ssh),
            script,
            source=source,
            sink=sink,
            timeout=timeout,
            track=self._track,
        )

    def _exec(
        self,
        command: Command,
        *,
        source: IO[bytes] | None,
        sink: Any,
        timeout: float | None,
    ) -> CommandResult:
        script = to_script(command)
        timeout = self.host.command_timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        chan = self._channel(self.host.connect_timeout)
        errors: list[BaseException] = []
        stderr = OutputLimit(self.name, keep="tail")
        late = f"`{shown(script)}` ran past its timeout of {timeout:g} s"
        try:
            # The remote side ends the command too when it runs past its time (with a margin):
            # closing the channel alone leaves it running on the host.
            chan.exec_command(with_timeout(script, timeout))
            feeder = None
            if source is not None:
                feeder = threading.Thread(target=_feed, args=(chan, source, errors), daemon=True)
                feeder.start()
            else:
                chan.shutdown_write()
            status = self._drain(chan, sink, stderr, feeder, deadline, late)
        except (paramiko.SSHException, EOFError, OSError) as e:
            self.close()
            raise ConnectError(self.name, f"the SSH connection broke while running a command: {e}") from e
        finally:
            chan.close()
        if errors and status == 0:
            err = errors[0]
            if isinstance(err, ForgeError):
                raise err
            raise ConnectError(self.name, f"sending data failed: {err}") from err
        return CommandResult(self.name, script, status, "", stderr.text(), time.monotonic() - started)

    def _drain(
        self,
        chan: paramiko.Channel,
        sink: Any,
        stderr: OutputLimit,
        feeder: threading.Thread | None,
        deadline: float | None,
        late: str,
    ) -> int:
        """Read the command's stdout into ``sink`` and its stderr into ``stderr`` until both
        end; its exit status. One thread reads both (a thread per command for stderr cost 3%
        of forge's CPU for a probe on a new connection): paramiko sets ``ready`` whenever either
        buffer gets data or closes, and a read that empties a buffer clears it, so ``ready``
        is cleared before each pass and waited on only after a pass that found nothing."""
        ready = threading.Event()
        chan.in_buffer.set_event(ready)
        chan.in_stderr_buffer.set_event(ready)
        while True:
            ready.clear()
            ended = bool(chan.eof_received or chan.closed)  # nothing comes after; drained below
            found = True
            while found:
                found = False
                if chan.recv_ready():
                    data = chan.recv(_CHUNK)
                    if sink is not None:
                        sink.write(data)
                    found = True
                if chan.recv_stderr_ready():
                    stderr.write(chan.recv_stderr(_CHUNK))
                    found = True
            if ended:
                break
            if not ready.wait(_remaining(deadline)):
                raise CommandTimeout(self.name, late)
        if feeder is not None:
            feeder.join(_remaining(deadline))
            if feeder.is_alive():
                raise CommandTimeout(self.name, late)
        if not chan.status_event.wait(_remaining(deadline)):
            raise CommandTimeout(self.name, late)
        return chan.recv_exit_status()


#: AES-GCM first: its tag is checked inside ``cryptography``, where the ``-ctr`` ciphers have
#: paramiko compare each packet's MAC byte by byte in Python (about a third of forge's CPU
#: for a probe on a kept connection). The other ciphers follow in paramiko's own order, for
#: servers configured without GCM.
_GCM = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


#: SSH_MSG_CHANNEL_WINDOW_ADJUST, _DATA, _EXTENDED_DATA and _EOF (RFC 4254).
_CHANNEL_DATA = frozenset({93, 94, 95, 96})


class _Transport(paramiko.Transport):
    #: How often paramiko's thread for a connection wakes while nothing comes in, during the
    #: handshake (paramiko: every 0.1 s): it checks the banner's and the handshake's timeouts
    #: then (a wake-up costs about 0.1 ms of CPU on a VM; a handshake rarely lasts a second).
    _active_check_timeout = 1.0
    #: The same once the connection is up (:meth:`idle`). Then a wake-up only looks whether
    #: the thread should stop, and closing the connection wakes it anyway (:meth:`close`; a
    #: jump hop's channel and a ``ProxyCommand`` when they close): once a second was 0.13-0.18
    #: ms of CPU per open connection and second, for nothing. A minute is a safety net.
    _idle_check_timeout = 60.0

    def _send_message(self, data: paramiko.Message) -> None:
        # Called under paramiko's lock that orders a connection's channel messages. A channel's
        # data, window or end-of-file message can come after its close: paramiko's senders
        # check the channel, let go of its lock, then send, while paramiko's thread closes it
        # on the server's close (a loop on the host ended, a command exited just as forge
        # ended its input). sshd ends the whole connection over a message for a channel it
        # has freed, so none leaves for a channel that is closed (paramiko marks it so before
        # its close goes out) or gone. Only channels the server confirmed have its number:
        # one still opening is numbered 0 by paramiko, and is often given the number of a
        # channel just closed (sshd reuses them), so taking it for that one held back its
        # every message.
        raw = data.asbytes()
        if len(raw) >= 5 and raw[0] in _CHANNEL_DATA:
            remote = int.from_bytes(raw[1:5], "big")
            channels = self._channels.values()  # type: ignore[attr-defined]
            if not any(c.active and not c.closed and c.remote_chanid == remote for c in channels):
                log.debug("not sending a message for closed channel %d", remote)
                return
        super()._send_message(data)  # type: ignore[misc]  # paramiko's, not in its stubs

    def idle(self) -> None:
        """The handshake is done: from now on the thread wakes when something comes in."""
        self.sock.settimeout(self._idle_check_timeout)

    def close(self) -> None:
        # A thread in recv() does not notice its socket closed (paramiko's own close) until
        # its next check: a shut-down socket wakes it now. (A jump hop's channel wakes its
        # reader when it closes.)
        if isinstance(self.sock, socket.socket):
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        super().close()


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    t = _Transport(sock, **kwargs)
    options = t.get_security_options()
    options.ciphers = (*[c for c in _GCM if c in options.ciphers], *[c for c in options.ciphers if c not in _GCM])
    return t


_keys: dict[str, tuple[bytes, paramiko.PKey | None]] = {}  # path -> (digest of the files, key)
_keys_lock = threading.Lock()


def _identity(path: str) -> paramiko.PKey | None:
    """The private key (and its certificate) at ``path``, parsed once per process while the
    files hold the same bytes; None where forge cannot read it without a passphrase (or at
    all): paramiko and the agent are left to try. paramiko itself reads and parses an identity
    file up to three times per connection (a key class after the other)."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError:
        return None
    try:
        cert = Path(f"{p}-cert.pub").read_bytes()
    except OSError:
        cert = b""
    digest = hashlib.sha256(len(data).to_bytes(8, "big") + data + cert).digest()  # not the key's bytes
    with _keys_lock:
        seen = _keys.get(str(p))
    if seen is not None and seen[0] == digest:
        return seen[1]
    try:
        key: paramiko.PKey | None = paramiko.PKey.from_path(p)
    except (paramiko.SSHException, OSError, ValueError, TypeError):
        key = None  # needs a passphrase, or a type forge's paramiko does not read
    with _keys_lock:
        _keys[str(p)] = (digest, key)
    return key


def _identities(files: Sequence[str]) -> tuple[paramiko.PKey | None, list[str]]:
    """The first identity file forge could read, loaded, and the others by name."""
    for i, f in enumerate(files):
        key = _identity(f)
        if key is not None:
            return key, [*files[:i], *files[i + 1 :]]
    return None, list(files)


def _via(hop: Hop, host: Host) -> str:
    return hop.where if hop.label == host.name else f"{hop.label} ({hop.where})"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic())


def _feed(chan: paramiko.Channel, source: IO[bytes], errors: list[BaseException]) -> None:
    try:
        while True:
            data = source.read(_CHUNK)
            if not data:
                break
            chan.sendall(data)
    except BaseException as e:  # reported by the caller
        errors.append(e)
    finally:  # end of input even after an error: the remote command must not wait for more
        try:
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass


def _nodelay_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
