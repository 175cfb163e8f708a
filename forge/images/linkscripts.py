"""What a direct transfer runs on its hosts, and what they print back.

- :func:`source_script`: the source's side of a flat transfer (``docker save | dd | compress |
  tee -p`` into one ``ssh`` per target);
- :func:`chain_source_script`: the source's side of a chain (the same into a spool file, sent
  on to the first hop);
- :func:`relay_script`: a chain's hop, run as its transfer keys' forced command;
- :func:`parse_report`: their ``forge-link ...`` lines, read as untrusted text; :class:`Lines`
  collects them from the source's stdout with ``dd``'s byte counts for the progress bar.

The ssh each runs is :func:`forge.images.hostlink.ssh_argv`'s; every command is rendered by
:mod:`forge.shell`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forge import shell
from forge.hostnum import natural
from forge.images import codec as codecs
from forge.images import hostlink
from forge.images.hostlink import Peer

_LOADED = re.compile(r"^Loaded image ID: (sha256:[0-9a-f]{64})$")
_PROGRESS = re.compile(rb"^(\d{1,18}) bytes")
_LINE = re.compile(
    r"^forge-link (?:(save|wire) (\d{1,18})|(host|link|cut|slow|out|err|probe) (\d{1,6}) ?(.*))$", re.ASCII
)
_KEEP_LINES = 400


@dataclass
class Report:
    """The source script's lines, parsed."""

    save_status: int | None = None
    wire: int = 0
    status: dict[int, int] = field(default_factory=dict)
    out: dict[int, list[str]] = field(default_factory=dict)
    err: dict[int, list[str]] = field(default_factory=dict)
    probe: dict[int, str] = field(default_factory=dict)
    link: dict[int, int] = field(default_factory=dict)  # a chain: the exit of the ssh to a hop
    cut: dict[int, int] = field(default_factory=dict)  # a chain: hops cut out, bytes behind
    slow: dict[int, int] = field(default_factory=dict)  # a chain: too slow, but no way around them
    tar: int = 0  # archive bytes read from docker save (dd's count)


def parse_report(lines: Sequence[str]) -> Report:
    """Pure: the ``forge-link ...`` lines the source scripts print (untrusted: only printable
    text is kept, numbers are checked)."""
    r = Report()
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        if m.group(1) == "save":
            r.save_status = int(m.group(2))
            continue
        if m.group(1) == "wire":
            r.wire = int(m.group(2))
            continue
        kind, i, rest = m.group(3), int(m.group(4)), printable(m.group(5))
        if kind in ("host", "link", "cut", "slow") and (number := natural(rest)) is not None:
            {"host": r.status, "link": r.link, "cut": r.cut, "slow": r.slow}[kind][i] = number
        elif kind in ("out", "err"):
            (r.out if kind == "out" else r.err).setdefault(i, []).append(rest)
        elif kind == "probe":
            r.probe[i] = rest
    return r


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def loaded_id(out: Sequence[str]) -> str | None:
    """The ID ``docker load -q`` printed for an archive without tags."""
    for line in out:
        m = _LOADED.match(line.strip())
        if m:
            return m.group(1)
    return None


class Lines(io.RawIOBase):
    """The source script's stdout: ``dd``'s progress counts to a callback, ``forge-link``
    lines kept (a bounded number)."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes
        self._buf = b""
        self.total = 0
        self.lines: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buf += bytes(data)
        *whole, self._buf = re.split(rb"[\r\n]", self._buf)
        if len(self._buf) > 4096:
            self._buf = b""
        for piece in whole:
            m = _PROGRESS.match(piece)
            if m:
                n = int(m.group(1))
                if n > self.total:
                    self._on_bytes(n - self.total)
                    self.total = n
            elif piece.startswith(b"forge-link ") and len(self.lines) < _KEEP_LINES:
                self.lines.append(piece.decode("utf-8", "replace"))
        return len(data)


def source_script(directory: str, save: Sequence[str], codec: codecs.Codec, peers: Sequence[Peer]) -> shell.Script:
    """The source's side of a flat transfer: ``docker save`` through ``dd`` (byte counts for
    the progress bar) and the compressor into its spool, and one ``ssh`` per peer following
    the spool, each at its own pace (a slow target holds up no other). Prints the save's
    status, the compressed size, and per peer its status and last lines."""
    lines = [
        f"cd -- {shell.quote(directory)} || exit 1",
        "cut -d' ' -f5 /proc/$$/stat > pgid",
        _FOLLOW,
        *_spool_save(save, codec),
    ]
    for p in peers:
        ssh = shell.render(hostlink.ssh_argv(directory, p, "forge-load"))
        lines.append(f"follow | {ssh} > out{p.index} 2> err{p.index} & p{p.index}=$!")
    lines += _saved()
    for p in peers:
        i = p.index
        lines += [
            f'wait "$p{i}"; echo "forge-link host {i} $?"',
            f"head -n 5 out{i} | sed 's/^/forge-link out {i} /'",
            f"tail -n 5 err{i} | sed 's/^/forge-link err {i} /'",
        ]
    lines.append("rm -f pgid")
    return shell.render(["bash", "-c", "\n".join(lines)])


#: ``tail`` looks at the writer every 50 ms once the file stops growing: in a chain each hop's
#: end waits on it, one hop after the other.
_FOLLOW = 'follow() { tail -c +1 -s 0.05 --pid="$R" -f spool; }'


def _spool_save(save: Sequence[str], codec: codecs.Codec) -> list[str]:
    """``docker save | dd | COMPRESS`` into ``spool`` in the background ($R), its status
    kept (``follow``, :data:`_FOLLOW`, reads the spool as it grows, until the save ends)."""
    stages = [shell.render(save), "dd bs=1M status=progress 2>&3"]
    if codec.compress:
        stages.append(shell.render(codec.compress))
    return [
        "exec 3>&1",
        ": > spool || exit 1",
        "( " + " | ".join(stages) + ' >> spool; echo "${PIPESTATUS[0]}" > saved ) & R=$!',
    ]


def _saved() -> list[str]:
    return ['wait "$R"', 'echo "forge-link save $(cat saved)"', 'echo "forge-link wire $(stat -c %s spool)"']


#: A next hop is cut out of the chain when, over the last ``LAG_WINDOW_S`` seconds, it took
#: less than half the rate at which its hop has been receiving, and is more than ``LAG_BYTES``
#: behind: it goes on loading from its hop alone, and the hop sends to the one after it too.
#: Rates, not a lag alone: a connection that took a moment to open is behind by that moment's
#: bytes at any speed, but not slower.
LAG_BYTES = 8 << 20
LAG_WINDOW_S = 3

#: The source tries its spare this long before it cuts its first hop out: see ``faster`` below.
TRIAL_S = 2
#: What the source's trial asks of its spare: take the stream and throw it away.
RATE = "forge-rate"

# A chain's hop (the source too) keeps what it receives in ``spool``, in its private
# directory; its own load and its sending on each read that file as it grows (``tail -f``
# until the writer, $R, ends), so neither waits for the other and a slow next hop holds up
# no one before it. ``forward NEXT SPARE GEN [TRIAL]`` sends to the next hop; with a spare (the
# hop after that one), ``watch`` samples each second what was received and what ``dd`` passed
# to the next hop and, once the next hop is too slow (see ``LAG_BYTES``), sends from the start
# of the spool to the spare as well, one generation up: the spare's newer instance stops the
# older one (fed by the slow hop, which then only loads). The report of the forward goes to
# stdout: the next hop's (or, cut, only its own lines, then the spare's; a spare that did
# not load leaves the next hop's whole report: every ``host`` line comes from the load it
# names, whichever way it travelled).
#
# The source (TRIAL set) makes the stream faster than any link, so its first hop always looks
# slow beside it: the limit may be the source's own uplink, and going around would only send
# two copies up it. So the source first tries (``faster``, once): for ``TRIAL_S`` seconds it
# also sends the spool to the spare, which throws it away (``forge-rate``). The trial's rate is
# what its ``dd`` says it copied and in how long (it may send the whole spool before the time
# is up); the first hop's, what its ``dd`` wrote meanwhile (``wchar`` in /proc: exact at any
# moment). The first hop is cut out only if the spare took more than twice its rate: an uplink
# that is the limit shares itself about evenly between the two.
_CHAIN_FUNCTIONS = r"""
sent() {
  local n
  n=$(tr '\r' '\n' < "sent$1" 2>/dev/null | tail -n 1)
  n=${n%% *}
  case "$n" in ''|*[!0-9]*) n=0 ;; esac
  echo "$n"
}
report() {
  echo "forge-link link $1 $2"
  tail -n 5 "err$1" | sed "s/^/forge-link err $1 /"
}
wrote() {
  local n
  n=$(awk '/^wchar:/ {print $2}' "/proc/$(cat "$1" 2>/dev/null)/io" 2>/dev/null)
  case "$n" in ''|*[!0-9]*) n=0 ;; esac
  echo "$n"
}
faster() {
  local p d t0 t1 a0 a1 n secs
  t0=$(date +%s%N); a0=$(wrote "dd$1")
  ( follow | { echo "$BASHPID" > trial.pid; exec dd bs=1M 2> trial.dd; } |
    { echo "$BASHPID" > trial.ssh; "rate$2" > /dev/null 2>&1; } ) &
  p=$!
  sleep @TRIAL@
  d=$(cat trial.pid 2>/dev/null)
  case "$d" in ''|*[!0-9]*) ;; *) kill -USR1 "$d" 2>/dev/null && sleep 0.2; kill "$d" 2>/dev/null ;; esac
  d=$(cat trial.ssh 2>/dev/null)
  case "$d" in ''|*[!0-9]*) ;; *) kill "$d" 2>/dev/null ;; esac
  wait "$p"
  t1=$(date +%s%N); a1=$(wrote "dd$1")
  read -r n secs < <(sed -n 's/^\([0-9]*\) bytes.* copied, \([0-9.]*\) s.*/\1 \2/p' trial.dd | tail -n 1)
  echo "${n:-0} ${secs:-0} $(( a1 - a0 )) $(( (t1 - t0) / 1000000 ))" > "trial$2"
  awk -v n="${n:-0}" -v s="${secs:-0}" -v a="$(( a1 - a0 ))" -v ms="$(( (t1 - t0) / 1000000 ))" \
    'BEGIN { exit !(n > 0 && s > 0 && ms > 0 && n / s > 2 * a * 1000 / ms) }'
}
watch() {
  local got sent behind rc t=0 took=1 earlier rate_out rate_in tried=
  local -a past=()
  while kill -0 "$4" 2>/dev/null; do
    sleep 1
    t=$(( t + 1 ))
    got=$(stat -c %s spool) || return
    if kill -0 "$R" 2>/dev/null; then took=$t; fi
    sent=$(sent "$1")
    past+=("$sent")
    behind=$(( got - sent ))
    [ "${#past[@]}" -gt @WINDOW@ ] || continue
    earlier=${past[$(( ${#past[@]} - 1 - @WINDOW@ ))]}
    rate_out=$(( (sent - earlier) / @WINDOW@ ))
    rate_in=$(( got / took ))
    [ "$behind" -gt @LAG@ ] && [ $(( rate_out * 2 )) -lt "$rate_in" ] || continue
    if [ -n "$5" ]; then
      [ -z "$tried" ] || continue
      tried=1
      faster "$1" "$2" || continue
    fi
    if mkdir decided 2>/dev/null; then
      echo "$behind" > "cut$1"
      follow | "link$2" "$(( $3 + 1 ))" > "out$2" 2> "err$2"
      rc=$?
      { report "$2" "$rc"; cat "out$2"; } > "report$2"
      return
    fi
  done
}
forward() {
  local p w rc
  follow | { echo "$BASHPID" > "dd$1"; exec dd bs=1M status=progress 2> "sent$1"; } |
    "link$1" "$3" > "out$1" 2> "err$1" &
  p=$!
  w=
  if [ -n "$2" ]; then
    watch "$1" "$2" "$3" "$p" "$4" < /dev/null > /dev/null 2>&1 &
    w=$!
  fi
  wait "$p"
  rc=$?
  if [ -n "$w" ]; then
    if mkdir decided 2>/dev/null; then kill "$w" 2>/dev/null; fi
    wait "$w"
  fi
  report "$1" "$rc"
  if [ -e "cut$1" ] && grep -q "^forge-link host $2 " "report$2"; then
    grep -E "^forge-link (host|out|err) $1 " "out$1"
    echo "forge-link cut $1 $(cat "cut$1")"
    cat "report$2"
  else
    [ -e "cut$1" ] && echo "forge-link slow $1 $(cat "cut$1")"
    cat "out$1"
  fi
}
"""


def _chain_functions(directory: str, links: Sequence[Peer]) -> list[str]:
    """The chain's shell functions, and one ``linkN GEN`` per hop this one can send to."""
    if not links:  # the last hop only loads
        return [_FOLLOW]
    functions = _CHAIN_FUNCTIONS.replace("@LAG@", str(int(LAG_BYTES))).replace("@WINDOW@", str(int(LAG_WINDOW_S)))
    functions = functions.replace("@TRIAL@", str(int(TRIAL_S)))
    lines = [_FOLLOW, functions.strip("\n")]
    for p in links:
        ssh = shell.render(hostlink.ssh_argv(directory, p))
        lines.append(f'link{p.index}() {{ {ssh} forge-load "$1"; }}')
        lines.append(f"rate{p.index}() {{ exec {ssh} {RATE}; }}")  # in a pipeline's subshell
    return lines


def _forward(nxt: Peer | None, spare: Peer | None, gen: str, *, trial: bool = False) -> list[str]:
    if nxt is None:
        return []
    other = str(spare.index) if spare else "''"
    return [f"forward {nxt.index} {other} {gen}{' trial' if trial else ''} > forward.out & F=$!"]


def chain_source_script(
    directory: str, save: Sequence[str], codec: codecs.Codec, first: Peer, spare: Peer | None
) -> shell.Script:
    """The source's side of a chain: ``docker save | dd | COMPRESS`` into its spool, sent on
    to the first hop, with the second as a spare that a slow first hop is cut out for once a
    trial showed the source's uplink is not the limit (see ``TRIAL_S``). Prints the save's
    status, the compressed size, then the chain's report."""
    lines = [
        f"cd -- {shell.quote(directory)} || exit 1",
        "cut -d' ' -f5 /proc/$$/stat > pgid",
        *_chain_functions(directory, [p for p in (first, spare) if p is not None]),
        *_spool_save(save, codec),
        *_forward(first, spare, "0", trial=True),
        *_saved(),
        'wait "$F"',
        "cat forward.out",
        "rm -f pgid",
    ]
    return shell.render(["bash", "-c", "\n".join(lines)])


# A hop's start: its generation from what the hop before asked for (``forge-load GEN``), its
# own directory, and the rule between instances on one hop: the newest generation goes on,
# older ones are stopped (each writes its group, then its generation, then looks: of two
# starting at once, at least one sees the other). A stopped one never gets to remove its group
# file: the one that stops it does, so no later clean-up signals that number again (by then
# the system may have given it to another process group).
_HOP_START = r"""
g=0
case "$SSH_ORIGINAL_COMMAND" in
  "forge-load "[0-9]|"forge-load "[0-9][0-9]) g=${SSH_ORIGINAL_COMMAND#forge-load } ;;
esac
run=$(mktemp -d run.XXXXXXXX) || exit 1
cd -- "$run" || exit 1
cut -d' ' -f5 /proc/$$/stat > pgid
echo "$g" > gen
for o in ../run.*; do
  [ "$o" = "../$run" ] && continue
  og=$(cat "$o/gen" 2>/dev/null)
  op=$(cat "$o/pgid" 2>/dev/null)
  case "$og" in ''|*[!0-9]*) continue ;; esac
  if [ "$og" -gt "$g" ]; then exit 0; fi
  case "$op" in ''|*[!0-9]*) continue ;; esac
  if [ "$og" -lt "$g" ]; then kill -TERM -- "-$op" 2>/dev/null; rm -f -- "$o/pgid"; fi
done
: > spool || exit 1
exec 3<&0
cat <&3 >> spool & R=$!
exec 3<&-
"""


def relay_script(directory: str, index: int, nxt: Peer | None, spare: Peer | None, load: shell.Script) -> str:
    """A hop of a chain (run as its key's forced command): what it receives into its spool,
    loaded from there and, at once, sent on from there to the next hop (with the one after as
    a spare: see ``LAG_BYTES``). A next hop that fails does not stop the load, nor a load that
    fails the sending on. Prints its own status and last lines, then the next hop's report."""
    lines = [
        "set -o pipefail",
        f'if [ "$SSH_ORIGINAL_COMMAND" = {RATE} ]; then exec cat > /dev/null; fi',
        f"cd -- {shell.quote(directory)} || exit 1",
        _HOP_START.strip("\n"),
        *_chain_functions(directory, [p for p in (nxt, spare) if p is not None]),
        *_forward(nxt, spare, '"$g"'),
        f"follow | {load} > load.out 2> load.err",
        "rc=$?",
        f'echo "forge-link host {index} $rc"',
        f"head -n 5 load.out | sed 's/^/forge-link out {index} /'",
        f"tail -n 5 load.err | sed 's/^/forge-link err {index} /'",
    ]
    if nxt is not None:
        lines += ['wait "$F"', "cat forward.out"]
    lines += ["rm -f pgid", 'exit "$rc"']
    return "\n".join(lines) + "\n"
