"""Host key verification for every hop of an SSH connection, jump hosts included.

paramiko's own known_hosts reader knows no ``@revoked`` or ``@cert-authority`` line, no
wildcard and no ``HostKeyAlias``, and Fabric accepted any key on a gateway. forge reads the
files itself (:mod:`forge.transport.knownhosts`), gives the client only the keys a hop may
present (plain lines for its name, minus revoked keys) and decides the rest here:

* ``strict`` (the default): the key must already be in a known_hosts file;
* ``accept-new``: an unknown key is recorded in the first known_hosts file and accepted (what
  OpenSSH calls ``StrictHostKeyChecking=accept-new``);
* a key that differs from the recorded one is refused under every policy, and so is a key a
  ``@revoked`` line names.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

import paramiko
from paramiko.hostkeys import HostKeyEntry

from forge.errors import HostKeyError
from forge.transport import knownhosts
from forge.transport.route import Hop


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _fingerprint_b64(key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _where(hop: Hop, host: str) -> str:
    """How a message names the hop: the host itself, or a jump host on the way to it."""
    return hop.lookup if hop.label == host else f"{hop.label} ({hop.lookup}, on the way to {host})"


def _files(hop: Hop) -> str:
    return ", ".join(str(f) for f in hop.known_hosts) or "no known_hosts file"


class _Policy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a key it was not given: unknown or revoked."""

    def __init__(self, host: str, hop: Hop, known: knownhosts.Known) -> None:
        self.host, self.hop, self.known = host, hop, known

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        hop = self.hop
        found = knownhosts.check(self.known.entries, hop.lookup, key.get_name(), key.get_base64())
        if found.verdict is knownhosts.Verdict.REVOKED:
            raise revoked_error(self.host, hop, key)
        if found.verdict is knownhosts.Verdict.CHANGED:  # a key type paramiko was not given
            raise changed_error(self.host, hop, key, found.known)
        if hop.policy == "accept-new" and hop.known_hosts:
            knownhosts.append(hop.known_hosts[0], hop.lookup, key.get_name(), key.get_base64())
            client.get_host_keys().add(hop.lookup, key.get_name(), key)
            return
        hint = (
            "check the fingerprint with the host's admin, then add it with `ssh-keyscan` to "
            f"{hop.known_hosts[0] if hop.known_hosts else '~/.ssh/known_hosts'}, or opt this host into "
            'recording new keys (host_key_policy = "accept-new" in hosts.toml; for a jump host, '
            "StrictHostKeyChecking accept-new in its ssh_config entry)"
        )
        if found.authorities:
            hint = (
                "known_hosts trusts a host certificate authority (@cert-authority) for it, and forge "
                "checks plain host keys only: add the host's own key line; " + hint
            )
        raise HostKeyError(
            self.host,
            f"unknown host key for {_where(hop, self.host)} ({key.get_name()} {fingerprint(key)}); "
            f"it is not in {_files(hop)}",
            hint=hint,
        )


def prepare(client: paramiko.SSHClient, hop: Hop, *, host: str) -> knownhosts.Known:
    """Give ``client`` the keys ``hop`` may present and forge's policy for any other key;
    returns the files read (for :func:`bad_key_error`)."""
    try:
        known = knownhosts.read(hop.known_hosts)
    except OSError as e:
        raise HostKeyError(host, f"cannot read a known_hosts file of {_where(hop, host)}: {e}") from e
    keys = client.get_host_keys()
    for entry in known.trusted(hop.lookup):
        key = _host_key(entry.key_type, entry.key)
        if key is not None:
            keys.add(hop.lookup, entry.key_type, key)
    client.set_missing_host_key_policy(_Policy(host, hop, known))  # every line read only for a key not given
    return known


@lru_cache(maxsize=1024)
def _host_key(key_type: str, key: str) -> paramiko.PKey | None:
    """A known_hosts line's key, parsed once per process (a key object is not changed by use);
    None for a line whose base64 holds no valid key of its type, which OpenSSH skips too (the
    key classes raise whatever their library raises: nacl's ValueError, SSHException...)."""
    try:
        parsed = HostKeyEntry.from_line(f"forge {key_type} {key}")
    except Exception:  # noqa: BLE001 - any parse failure of the line's bytes
        return None
    return parsed.key if parsed is not None else None


def bad_key_error(host: str, hop: Hop, e: paramiko.BadHostKeyException, known: knownhosts.Known) -> HostKeyError:
    """paramiko found the hop's name with another key: revoked, or changed."""
    found = knownhosts.check(known.entries, hop.lookup, e.key.get_name(), e.key.get_base64())
    if found.verdict is knownhosts.Verdict.REVOKED:
        return revoked_error(host, hop, e.key)
    return changed_error(host, hop, e.key, found.known)


def revoked_error(host: str, hop: Hop, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        host,
        f"the host key of {_where(hop, host)} ({key.get_name()} {fingerprint(key)}) is REVOKED in "
        f"{_files(hop)}; refusing to connect",
        hint="ask the host's admin for its new key",
    )


def changed_error(host: str, hop: Hop, key: paramiko.PKey, known: tuple[knownhosts.Entry, ...]) -> HostKeyError:
    recorded = ", ".join(sorted({_fingerprint_b64(k.key) for k in known})) or "another key"
    source = known[0].source.rsplit(":", 1)[0] if known else (str(hop.known_hosts[0]) if hop.known_hosts else "")
    return HostKeyError(
        host,
        f"the host key of {_where(hop, host)} has CHANGED: known_hosts has {recorded}, the server "
        f"offered {fingerprint(key)}; refusing to connect (this can be a man-in-the-middle attack)",
        hint=f"if the host was reinstalled, remove the old key with `ssh-keygen -R {hop.lookup} -f {source}` "
        "and verify the new one",
    )
