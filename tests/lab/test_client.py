"""forge run by an ordinary user, not root, as most people run it: every command but `forge
lab` (issue 11: "an ordinary client"). The lab user is the client here: its own key and
known_hosts in its own home, forge from a virtual environment on Debian's python3
(.venv-client, made by .ci/setup)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.lab import DATA_MARKER, DATA_MARKER_CONTENT
from forge.lab.toolchain import load_toolchain_image
from tests.conftest import LabHandle

pytestmark = pytest.mark.lab

CLIENT = Path(__file__).resolve().parents[2] / ".venv-client" / "bin" / "forge"


@pytest.fixture(scope="module")
def client(lab: LabHandle) -> Iterator[dict[str, object]]:
    if not CLIENT.exists():
        pytest.fail(f"{CLIENT} is missing: run bash .ci/setup", pytrace=False)
    user = pwd.getpwnam(lab.user)
    home = Path(user.pw_dir)
    inv = home / f"client-{uuid.uuid4().hex[:6]}.toml"  # pytest's own tmp dirs are root's
    text = lab.inventory_path.read_text()
    text = text.replace(f'identity_file = "{lab.identity_file}"', f'identity_file = "{home}/.ssh/id_ed25519"', 1)
    text = text.replace(f'known_hosts = "{lab.known_hosts}"', f'known_hosts = "{home}/.ssh/known_hosts"', 1)
    config = None
    if lab.ssh_config is not None:  # behind a bastion: the user's own OpenSSH config, key and known_hosts
        config = home / f"{inv.stem}.ssh_config"
        own = lab.ssh_config.read_text().replace(str(lab.identity_file), f"{home}/.ssh/id_ed25519")
        config.write_text(own.replace(str(lab.known_hosts), f"{home}/.ssh/known_hosts"))
        os.chmod(config, 0o644)
        text = text.replace(f'ssh_config = "{lab.ssh_config}"', f'ssh_config = "{config}"', 1)
    assert str(lab.lab.config.ssh_dir) not in text.split("[data]")[0], text  # nothing of root's is left
    inv.write_text(text)
    os.chmod(inv, 0o644)
    yield {"user": lab.user, "uid": user.pw_uid, "home": home, "inventory": inv}
    inv.unlink()
    if config is not None:
        config.unlink()


def as_client(client: dict[str, object], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """forge as the client user, in its own home, from a directory it owns (never root's)."""
    env = {"HOME": str(client["home"]), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    argv = ["runuser", "-u", str(client["user"]), "--", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    argv += [str(CLIENT), "-i", str(client["inventory"]), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(client["home"]))


def test_an_ordinary_user_runs_every_command(lab: LabHandle, client: dict[str, object]) -> None:
    env = f"client{uuid.uuid4().hex[:6]}"
    tag = f"forge-test/client:{env}"
    build_host, other = lab.hosts[0], lab.hosts[1]
    base = lab.load_base_image(build_host)
    toolchain = load_toolchain_image(lab.lab, build_host)
    try:
        r = as_client(client, "hosts", "--check", "--json")
        assert r.returncode == 0, r.stderr
        assert all(h["reachable"] and h["docker"] for h in json.loads(r.stdout)["hosts"])
        r = as_client(client, "gpus", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["summary"]["free"] > 0, r.stderr
        build = ["build", "--host", build_host, "-t", tag, "--base", base, "--toolchain", toolchain, "--no-packages"]
        r = as_client(client, *build, "--quiet", timeout=1200)
        assert r.returncode == 0, r.stderr[-2000:]
        r = as_client(client, "sync", tag, "--from", build_host, "--to", other, "--json")
        assert r.returncode == 0, r.stderr
        assert [x["action"] for x in json.loads(r.stdout)["results"]] == ["send"]
        r = as_client(client, "migrate", "--env", env, "--to", other, "--image", tag, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["host"] == other
        r = as_client(client, "ps", "--json")
        assert r.returncode == 0 and [e["env"] for e in json.loads(r.stdout)["environments"]].count(env) == 1
        r = as_client(client, "ssh", env, "sh", "-c", f"id -u; cat /data/{DATA_MARKER}")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{client['uid']}\n{DATA_MARKER_CONTENT}"
        # what forge wrote on the client is the user's own
        pinned = Path(str(client["home"])) / ".ssh" / "forge_known_hosts"
        assert pinned.stat().st_uid == client["uid"] and f"forge-{env} " in pinned.read_text()
    finally:
        r = as_client(client, "stop", env)
        for h in (build_host, other):
            lab.docker(h, "rmi", "-f", tag)
    assert r.returncode == 0, r.stderr
