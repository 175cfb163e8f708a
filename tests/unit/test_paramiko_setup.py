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
