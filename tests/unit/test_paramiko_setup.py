"""What forge changes in how paramiko is loaded and connects: invoke imported only when a
``Match exec`` line needs it; AES-GCM offered first."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _fresh(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return r.stdout


def test_forge_ssh_does_not_import_invoke_until_a_match_exec_runs() -> None:
    out = _fresh(
        """
        import sys
        import forge.transport.ssh
        import paramiko
        print(type(sys.modules["invoke"]).__name__, "invoke.collection" in sys.modules)
        config = paramiko.SSHConfig.from_text("Match exec true\\n  User fromexec\\nHost *\\n  Port 2222\\n")
        print(config.lookup("h")["user"], config.lookup("h")["port"])
        print(type(sys.modules["invoke"]).__name__, "invoke.collection" in sys.modules)
        config = paramiko.SSHConfig.from_text("Match exec false\\n  User fromexec\\n")
        print(config.lookup("h").get("user"))
        """
    )
    assert out.split("\n")[:4] == ["_Deferred False", "fromexec 2222", "module True", "None"]


def test_an_invoke_already_imported_is_left_as_it_is() -> None:
    out = _fresh(
        """
        import sys
        import invoke
        import forge.transport.ssh
        print(sys.modules["invoke"] is invoke, type(invoke).__name__)
        from invoke import task
        print(callable(task))
        """
    )
    assert out.split("\n")[:2] == ["True module", "True"]


def test_forges_ssh_connections_offer_aes_gcm_first_and_keep_the_other_ciphers() -> None:
    import socket

    import paramiko

    from forge.transport import ssh

    a, b = socket.socketpair()
    try:
        t = ssh._transport(a)
        offered = t.get_security_options().ciphers
        assert offered[:2] == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        assert sorted(offered) == sorted(paramiko.Transport._preferred_ciphers)
        t.close()
    finally:
        a.close()
        b.close()


def test_an_identity_file_is_read_once_while_it_is_unchanged(tmp_path: object) -> None:
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from forge.transport import ssh

    def write(path: Path, password: bytes | None = None) -> None:
        enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        key = ed25519.Ed25519PrivateKey.generate()
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc))

    d = Path(str(tmp_path))
    plain, locked = d / "id_plain", d / "id_locked"
    write(plain)
    write(locked, b"secret")
    key, others = ssh._identities((str(locked), str(plain)))
    assert key is not None and key.get_name() == "ssh-ed25519"
    assert others == [str(locked)]  # left to paramiko (and the agent): forge holds no passphrase
    assert ssh._identities((str(plain),))[0] is key  # read once
    write(plain)
    again, _ = ssh._identities((str(plain),))
    assert again is not None and again is not key and again.get_base64() != key.get_base64()  # rewritten: read anew
    assert ssh._identities((str(d / "missing"),)) == (None, [str(d / "missing")])
