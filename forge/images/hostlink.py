"""What ``forge sync --via direct`` places on hosts so that a source can send to its targets.

No key of the user leaves the client and no agent is forwarded. Instead, for one transfer:

- on the **source**, a private directory (``mktemp -d`` in ``$TMPDIR`` or ``/var/tmp``, mode
  0700; on disk, where ``/tmp`` may be memory, for it also holds the compressed stream while
  the transfer runs) with one new ed25519 key pair per target (a chain's hop: the next two),
  made there by ``ssh-keygen`` (the private keys never travel), and a
  known_hosts file holding each target's host key *as forge verified it* on its own connection
  to that target, each under an alias (``HostKeyAlias``) so that only that key is accepted for
  that target, whatever address the source reaches it by;
- on each **target**, one line in ``~/.ssh/authorized_keys`` for that target's public key:
  ``restrict`` (no forwarding, no pty, no agent, no X11), a forced ``command=`` that can only
  answer a reachability probe or run that target's ``decompress | docker load``, and an
  ``expiry-time`` an hour or so past the transfer's timeout, computed on the target's own clock;
  the key's comment carries the transfer's token.

Both are removed when the transfer ends, however it ends (the client's ``finally``; after a
Ctrl-C too): the token's lines from each target's file (rewritten in place under ``flock``, so
concurrent transfers and the file's owner, mode and links are kept) and the directory on the
source (after stopping the transfer's process group if it still runs). If the client itself is
killed, the expiry makes the lines useless and the keys are only on the source, in the user's
private directory.

Everything here is text built from forge's own values (its token, its paths, the host keys
forge verified); what the source prints back (its directory, the public keys) is checked
before it is used.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from forge import shell
from forge.errors import ForgeError, HostError

PROBE = "forge-probe"
PROBE_OK = "forge-link-ok"
#: A target's key is accepted this long after the transfer's timeout (target's clock).
EXPIRY_MARGIN_S = 600
CONNECT_TIMEOUT_S = 10

_DIR = re.compile(r"^/[A-Za-z0-9._/-]+/forge-link\.[A-Za-z0-9]+$")
_PUB = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+={0,2} (forge-link-[0-9a-f]{16}-[0-9]+)$")
_KEY_TYPE = re.compile(r"^[a-z0-9@.-]+$")
_KEY_B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class LinkError(HostError):
    """What a direct transfer needs could not be placed on a host."""


@dataclass(frozen=True)
class Peer:
    """A target as the source reaches it, with the host key forge verified for it."""

    index: int
    name: str
    hostname: str
    port: int
    user: str
    key_type: str
    key_b64: str

    @property
    def alias(self) -> str:
        return f"forge-link-{self.index}"

    def __post_init__(self) -> None:
        if not (_KEY_TYPE.match(self.key_type) and _KEY_B64.match(self.key_b64)):
            raise ValueError(f"not a host key: {self.key_type!r}")


def new_token() -> str:
    return secrets.token_hex(8)


def comment(token: str, index: int) -> str:
    return f"forge-link-{token}-{index}"


# --------------------------------------------------------------------------- pure text


def forced_command(load: shell.Script) -> str:
    """The only thing a target's transfer key can run: the probe's answer, or ``load``."""
    return f'if [ "$SSH_ORIGINAL_COMMAND" = {PROBE} ]; then echo {PROBE_OK}; else exec {load}; fi'


def key_options(load: shell.Script) -> str:
    """``authorized_keys`` options for a transfer key (the target's script adds the expiry).

    Inside ``command="..."`` sshd turns ``\\"`` into ``"`` and keeps every other byte: forge's
    commands (rendered by :mod:`forge.shell`) never hold a backslash or a line break; one that
    did is refused rather than guessed at."""
    command = forced_command(load)
    if any(c in command for c in "\\\n\r\0"):
        raise ForgeError("cannot place a transfer key: the load command has a backslash or a line break")
    return 'restrict,command="' + command.replace('"', '\\"') + '"'


def known_hosts(peers: Sequence[Peer]) -> str:
    return "".join(f"{p.alias} {p.key_type} {p.key_b64}\n" for p in peers)


def ssh_argv(directory: str, peer: Peer, *remote: str) -> list[str]:
    """The source's ``ssh`` to one target: that target's key and host key only, nothing from
    the user's config, no agent, no forwarding, no password prompt."""
    options = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": f"{directory}/known_hosts",
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlias": peer.alias,
        "ConnectTimeout": str(CONNECT_TIMEOUT_S),
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "4",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "Compression": "no",
    }
    argv = ["ssh", "-F", "none", "-T", "-i", f"{directory}/key{peer.index}"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return [*argv, "-p", str(peer.port), "-l", peer.user, "--", peer.hostname, *remote]


def parse_keys(stdout: str, token: str, indexes: Sequence[int]) -> tuple[str, list[str]]:
    """A holder's directory and the public keys numbered ``indexes``, in order; checked, as
    untrusted."""
    lines = stdout.strip().splitlines()
    if len(lines) != len(indexes) + 1 or not _is_dir(lines[0]):
        raise ValueError("unexpected output from the key set-up")
    keys = []
    for i, line in enumerate(lines[1:]):
        m = _PUB.match(line.strip())
        if m is None or m.group(1) != comment(token, indexes[i]):
            raise ValueError(f"unexpected public key {i}")
        keys.append(line.strip())
    return lines[0], keys


def directory_in(stdout: str) -> str | None:
    """The transfer directory the key set-up printed, where the rest of its output cannot be
    understood (it made the directory: forge removes it)."""
    return next((ln for ln in stdout.splitlines() if _is_dir(ln)), None)


def _is_dir(line: str) -> bool:
    return _DIR.match(line) is not None and ".." not in line


# --------------------------------------------------------------------------- on the hosts

# $1: token, $2: the KiB of free space the directory needs (a chain's spool), then the numbers
# of the keys to make (none: only the directory); stdin: the known_hosts text of the hops the
# keys reach. Prints the directory, then one public key per line.
_MAKE_KEYS = r"""
for t in ssh ssh-keygen dd tail stat; do
  command -v "$t" >/dev/null || { echo "no $t here" >&2; exit 3; }
done
umask 077
d=$(mktemp -d "${TMPDIR:-/var/tmp}/forge-link.XXXXXXXX") || exit 1
case "${d%/forge-link.*}" in /*[!A-Za-z0-9._/-]*|[!/]*|*..*)
  echo "the temporary directory's path has characters forge does not take (set TMPDIR)" >&2
  rm -rf -- "$d"; exit 5 ;;
esac
free=$(df -Pk -- "$d" | awk 'NR == 2 { print $4 }')
case "$free" in ''|*[!0-9]*) free=0 ;; esac
if [ "$2" -gt 0 ] && [ "$free" -lt "$2" ]; then
  echo "not enough space in ${d%/*} for the relay's copy of the stream:" \
    "$((free / 1024)) MiB free, $(($2 / 1024)) MiB needed" >&2
  rm -rf -- "$d"; exit 4
fi
cat > "$d/known_hosts" || { rm -rf -- "$d"; exit 1; }
t=$1
shift 2
for i in "$@"; do
  ssh-keygen -q -t ed25519 -N '' -C "forge-link-$t-$i" -f "$d/key$i" </dev/null >/dev/null ||
    { rm -rf -- "$d"; exit 1; }
done
echo "$d"
for i in "$@"; do cat "$d/key$i.pub"; done
"""

_WRITE_RELAY = 'case "$1" in */forge-link.*) umask 077; cat > "$1/relay" ;; *) exit 1 ;; esac'

# $1: directory. Stops a transfer still running there (its process groups: the holder's, a
# chain hop's instances'), then removes it.
_REMOVE_DIR = r"""
case "$1" in */forge-link.*) ;; *) exit 1 ;; esac
[ -d "$1" ] || exit 0
for f in "$1/pgid" "$1"/run.*/pgid; do
  [ -s "$f" ] || continue
  pg=$(cat "$f")
  case "$pg" in *[!0-9]*|'') ;; *) kill -TERM "-$pg" 2>/dev/null ;; esac
done
rm -rf -- "$1"
"""

# $1: options, $2: public key line, $3: seconds until it expires (on this host's clock).
_ADD_KEY = r"""
exp=$(date -u -d "@$(( $(date +%s) + $3 ))" +%Y%m%d%H%M) || exit 1
d="$HOME/.ssh"; f="$d/authorized_keys"
umask 077
mkdir -p -- "$d" || exit 1
exec 9>>"$f" || exit 1
command -v flock >/dev/null && flock 9
if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f"; fi
printf '%s,expiry-time="%sZ" %s\n' "$1" "$exp" "$2" >> "$f"
"""

# $1: token. Removes every line carrying it, rewriting the file in place.
_REMOVE_KEYS = r"""
f="$HOME/.ssh/authorized_keys"
[ -f "$f" ] || exit 0
grep -qF -- "forge-link-$1-" "$f" || exit 0
exec 9>>"$f" || exit 1
command -v flock >/dev/null && flock 9
t=$(mktemp "$HOME/.ssh/.forge-link.XXXXXXXX") || exit 1
grep -vF -- "forge-link-$1-" "$f" > "$t"
rc=$?
[ "$rc" -le 1 ] && cat "$t" > "$f"
rm -f -- "$t"
[ "$rc" -le 1 ]
"""


def make_keys(token: str, indexes: Sequence[int], *, spool_bytes: int = 0) -> shell.Script:
    """A holder's private directory with a key per hop in ``indexes``; ``spool_bytes``: the free
    space it must have (a chain's hop keeps the stream there)."""
    need_kib = -(-spool_bytes // 1024)
    return shell.script(_MAKE_KEYS, token, str(need_kib), *(str(i) for i in indexes))


def write_relay(directory: str) -> shell.Script:
    """The relay script of a hop (stdin), as ``DIR/relay``, readable by its owner only."""
    return shell.script(_WRITE_RELAY, directory)


def relay_command(directory: str) -> shell.Script:
    """A relaying hop's forced load: its own relay script."""
    return shell.render(["bash", f"{directory}/relay"])


def remove_dir(directory: str) -> shell.Script:
    return shell.script(_REMOVE_DIR, directory)


def add_key(options: str, public_key: str, seconds: int) -> shell.Script:
    return shell.script(_ADD_KEY, options, public_key, str(seconds))


def remove_keys(token: str) -> shell.Script:
    return shell.script(_REMOVE_KEYS, token)
