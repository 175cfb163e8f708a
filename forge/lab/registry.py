"""The lab's registry: Debian's ``docker-registry`` (Docker Distribution) on the data host,
with TLS from a lab CA that every lab daemon trusts, and basic auth (htpasswd, bcrypt).

- ``<root>/registry/``: the CA and the server's key and certificate (for the data host's
  address), ``htpasswd``, ``config.yml``, the storage, ``password`` (the lab user's registry
  password, root's only: a test credential), ``registry.log`` and ``pid``;
- trust: the CA as ``/etc/docker/certs.d/ADDRESS/ca.crt``, where Docker looks for a registry's
  CA, in this machine's file system and in each chrooted engine root (recorded, removed at
  down);
- the lab user's login, as ``docker login`` would write it: ``~/.docker/config.json`` (the
  hosts share this machine's homes). forge itself never handles the password.

Only when ``docker-registry`` and ``htpasswd`` are installed (CI installs them); the inventory
then has a ``[registry]`` table.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from forge.lab.config import LabConfig
from forge.lab.errors import LabError
from forge.lab.netns import nsenter
from forge.lab.proc import kill_all, pid_alive, read_pidfile, run

PORT = 5000


def available() -> bool:
    return all(shutil.which(t) for t in ("docker-registry", "htpasswd", "openssl"))


def directory(cfg: LabConfig) -> Path:
    return cfg.root / "registry"


def address(cfg: LabConfig) -> str:
    return f"{cfg.host('data').address}:{PORT}"


def certs_dirs(cfg: LabConfig, roots: list[Path]) -> list[Path]:
    """Where Docker daemons look for this registry's CA: this machine's and each engine root's."""
    return [Path(r) / "etc" / "docker" / "certs.d" / address(cfg) for r in [Path("/"), *roots]]


def _tls(cfg: LabConfig) -> None:
    d = directory(cfg)
    if (d / "server.crt").exists():
        return
    ip = cfg.host("data").address
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
         "-days", "30", "-subj", "/CN=forge lab CA"])  # fmt: skip
    run(["openssl", "req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
         "-subj", f"/CN={ip}"])  # fmt: skip
    (d / "san.cnf").write_text(f"subjectAltName=IP:{ip}\n")
    run(["openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
         str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.crt"), "-days", "30",
         "-extfile", str(d / "san.cnf")])  # fmt: skip


def _auth(cfg: LabConfig) -> str:
    """The lab user's registry password (made once) and the htpasswd file of it."""
    d = directory(cfg)
    pw_file = d / "password"
    if not pw_file.exists():
        pw_file.write_text(secrets.token_urlsafe(18))
        pw_file.chmod(0o600)
    password = pw_file.read_text().strip()
    if not (d / "htpasswd").exists():
        subprocess.run(
            ["htpasswd", "-B", "-i", "-c", str(d / "htpasswd"), cfg.user],
            input=password, text=True, capture_output=True, check=True,
        )  # fmt: skip
    return password


def _config(cfg: LabConfig) -> Path:
    d = directory(cfg)
    conf = d / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {address(cfg)}\n  tls:\n    certificate: {d / 'server.crt'}\n    key: {d / 'server.key'}\n"
        f"auth:\n  htpasswd:\n    realm: forge-lab\n    path: {d / 'htpasswd'}\n"
    )
    return conf


def login(cfg: LabConfig, password: str, *, user: str | None = None) -> Path:
    """``~/.docker/config.json`` of the lab user, as ``docker login ADDRESS`` writes it
    without a credential helper (a wrong ``password`` makes a login the registry refuses)."""
    user = user or cfg.user
    entry = pwd.getpwnam(user)
    dot = Path(entry.pw_dir) / ".docker"
    dot.mkdir(mode=0o700, exist_ok=True)
    path = dot / "config.json"
    token = base64.b64encode(f"{cfg.user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {address(cfg): {"auth": token}}}, indent=1) + "\n")
    path.chmod(0o600)
    for p in (dot, path):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    return path


def password(cfg: LabConfig) -> str:
    return (directory(cfg) / "password").read_text().strip()


def pidfile(cfg: LabConfig) -> Path:
    return directory(cfg) / "pid"


def running(cfg: LabConfig) -> bool:
    pid = read_pidfile(pidfile(cfg))
    return pid is not None and pid_alive(pid)


def start(cfg: LabConfig, roots: list[Path]) -> list[Path]:
    """Set up (once) and start the registry; the CA directories it created for trust."""
    d = directory(cfg)
    (d / "storage").mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    _tls(cfg)
    password = _auth(cfg)
    created = []
    for certs in certs_dirs(cfg, roots):
        if not certs.exists():
            created.append(certs)
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "ca.crt", certs / "ca.crt")
    login(cfg, password)
    if not running(cfg):
        argv = [*nsenter(cfg.host("data").netns), "docker-registry", "serve", str(_config(cfg))]
        with open(d / "registry.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        pidfile(cfg).write_text(f"{proc.pid}\n")
        _wait_listening(cfg, proc)
    return created


def _wait_listening(cfg: LabConfig, proc: subprocess.Popen[bytes]) -> None:
    ns = nsenter(cfg.host("data").netns)
    probe = [*ns, "bash", "-c", f"</dev/tcp/{cfg.host('data').address}/{PORT}"]
    deadline = time.monotonic() + 60  # it listens within 0.2 s, also with both cores busy
    last: subprocess.CompletedProcess[str] | None = None
    while time.monotonic() < deadline:
        try:  # a connection attempt whose first packet went unanswered waits for its retry
            last = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=2)
        except subprocess.TimeoutExpired:
            continue
        if last.returncode == 0:
            return
        if proc.poll() is not None:
            raise LabError(f"the registry exited at once (see {directory(cfg) / 'registry.log'})")
        time.sleep(0.1)
    # Once in a CI run it did not answer within 20 s, still running (and once by hand 55 s
    # after it had logged its start, with a probe that had no time limit); what was there:
    listening = subprocess.run([*ns, "ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
    log = (directory(cfg) / "registry.log").read_text(errors="replace").splitlines()[-5:]
    said = last.stderr.strip() if last is not None else "nothing within 2 s"
    raise LabError(
        f"the registry (pid {proc.pid}) does not listen on {address(cfg)} after 60 s; "
        f"the probe said: {said!r}; listening there: {listening.strip()!r}; its log ends: {log!r}"
    )


def stop(cfg: LabConfig) -> None:
    pid = read_pidfile(pidfile(cfg))
    if pid is not None and pid_alive(pid):
        kill_all([pid], grace=5.0)
    pidfile(cfg).unlink(missing_ok=True)


def remove_trust(dirs: list[str]) -> None:
    for d in dirs:
        p = Path(d)
        if p.name.endswith(f":{PORT}") and "certs.d" in p.parts:
            shutil.rmtree(p, ignore_errors=True)
