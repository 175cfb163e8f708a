"""The public keys a dev environment lets in: one rule for forge build and forge migrate."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge import keys

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDq3Gm6bV5wDk0 alice@laptop"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 alice@old"


def test_parse_skips_comments_and_refuses_junk_and_private_keys() -> None:
    assert keys.parse(f"# mine\n{KEY}\n\n{RSA}\n", source="k") == [KEY, RSA]
    with pytest.raises(keys.PublicKeyError, match="line 1: not an OpenSSH public key"):
        keys.parse("hello world\n", source="k")
    with pytest.raises(keys.PublicKeyError, match="private key"):
        keys.parse("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", source="id_ed25519")


def test_read_dedups_and_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_text(KEY + "\n")
    (tmp_path / "b.pub").write_text(f"{KEY}\n{RSA}\n")
    assert keys.read([tmp_path / "a.pub", tmp_path / "b.pub"]) == (KEY, RSA)
    with pytest.raises(keys.PublicKeyError, match="cannot read public key .*nope.pub"):
        keys.read([tmp_path / "nope.pub"])


def test_the_inventory_key_wins_else_every_default_key(isolated_home: Path) -> None:
    ssh = isolated_home / ".ssh"
    ssh.mkdir()
    for name in ("id_rsa.pub", "id_ed25519.pub", "id_ed25519", "other.pub"):
        (ssh / name).write_text(KEY if name.endswith(".pub") else "x")
    assert [p.name for p in keys.default_files()] == ["id_ed25519.pub", "id_rsa.pub"]
    (isolated_home / "lab.pub").write_text(RSA + "\n")
    assert keys.default_files(str(isolated_home / "lab")) == [isolated_home / "lab.pub"]
    assert keys.default_keys(str(isolated_home / "lab")) == (RSA,)
    # an inventory key without its .pub: the defaults
    assert [p.name for p in keys.default_files(str(isolated_home / "nope"))] == ["id_ed25519.pub", "id_rsa.pub"]


def test_no_key_at_all_says_what_to_do(isolated_home: Path) -> None:
    with pytest.raises(keys.PublicKeyError, match="no public key") as e:
        keys.default_keys()
    assert "ssh-keygen" in str(e.value)
