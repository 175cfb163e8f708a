"""known_hosts lines as OpenSSH reads them: hashed names, wildcards, negation, ports, markers."""

from __future__ import annotations

import base64
from pathlib import Path

import paramiko
import pytest

from forge.transport import hostkeys, knownhosts
from forge.transport.knownhosts import Verdict
from forge.transport.route import Hop

K1 = "AAAAC3NzaC1lZDI1NTE5AAAAINchO8A+Y0gZZTci5QI4QoqrEW3c5OvyFzjIgIj/EP9V"
K2 = "AAAAC3NzaC1lZDI1NTE5AAAAIMLOBMq/JKHpoNWrj9jKTX+fp9VQfh6jLLrQulL8QIeJ"
# `ssh-keygen -H` of "gpu1 ssh-ed25519 K1"
HASHED_GPU1 = "|1|xE8S0+/E4Llx4DJT+vIimayrcHg=|cF4rJxPXstLY6ie7J8jX6O9uNV8="
ED = "ssh-ed25519"


def check(text: str, name: str, key: str = K1) -> knownhosts.Check:
    return knownhosts.check(knownhosts.parse(text, "kh"), name, ED, key)


def test_a_plain_line_makes_its_key_known_and_another_key_changed() -> None:
    text = f"gpu1,10.0.0.1 {ED} {K1}\n"
    assert check(text, "gpu1").verdict is Verdict.KNOWN
    assert check(text, "10.0.0.1").verdict is Verdict.KNOWN
    assert check(text, "gpu1", K2).verdict is Verdict.CHANGED
    assert check(text, "gpu2").verdict is Verdict.UNKNOWN


def test_hashed_names_match_the_name_they_hash() -> None:
    text = f"{HASHED_GPU1} {ED} {K1}\n"
    assert check(text, "gpu1").verdict is Verdict.KNOWN
    assert check(text, "gpu2").verdict is Verdict.UNKNOWN


def test_a_port_other_than_22_is_looked_up_in_brackets() -> None:
    assert knownhosts.lookup_name("10.0.0.1", 22) == "10.0.0.1"
    assert knownhosts.lookup_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert knownhosts.lookup_name("10.0.0.1", 2222, alias="forge-dev") == "forge-dev"
    text = f"[10.0.0.1]:2222 {ED} {K1}\n"
    assert check(text, "[10.0.0.1]:2222").verdict is Verdict.KNOWN
    assert check(text, "10.0.0.1").verdict is Verdict.UNKNOWN


def test_wildcards_and_negation() -> None:
    text = f"*.lab.example.org,!evil.lab.example.org {ED} {K1}\n"
    assert check(text, "gpu1.lab.example.org").verdict is Verdict.KNOWN
    assert check(text, "GPU1.Lab.Example.org").verdict is Verdict.KNOWN  # names are case-insensitive
    assert check(text, "evil.lab.example.org").verdict is Verdict.UNKNOWN
    assert check(f"gpu? {ED} {K1}\n", "gpu7").verdict is Verdict.KNOWN
    assert check(f"gpu? {ED} {K1}\n", "gpu17").verdict is Verdict.UNKNOWN
    # a [host]:port name is not a character class
    assert check(f"[10.0.0.*]:2222 {ED} {K1}\n", "[10.0.0.9]:2222").verdict is Verdict.KNOWN


def test_a_revoked_key_is_refused_even_when_another_line_lists_it() -> None:
    text = f"gpu1 {ED} {K1}\n@revoked * {ED} {K1}\n"
    assert check(text, "gpu1").verdict is Verdict.REVOKED
    assert knownhosts.trusted(knownhosts.parse(text), "gpu1") == []
    # revocation is for the hosts it names
    text = f"gpu1 {ED} {K1}\n@revoked gpu2 {ED} {K1}\n"
    assert check(text, "gpu1").verdict is Verdict.KNOWN


def test_cert_authority_lines_never_make_a_host_known() -> None:
    text = f"@cert-authority *.lab {ED} {K1}\n"
    found = check(text, "gpu1.lab")
    assert found.verdict is Verdict.UNKNOWN
    assert [e.marker for e in found.authorities] == ["cert-authority"]
    assert knownhosts.trusted(knownhosts.parse(text), "gpu1.lab") == []


def test_comments_blank_and_broken_lines_are_skipped() -> None:
    text = f"# a comment\n\ngpu1\ngpu1 {ED} not-base64!!\n@bogus gpu1 {ED} {K1}\ngpu1 {ED} {K1} root@vm\n"
    entries = knownhosts.parse(text, "kh")
    assert [(e.patterns, e.source) for e in entries] == [(("gpu1",), "kh:6")]


def test_read_reads_files_in_order_and_skips_missing_ones(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(f"gpu1 {ED} {K1}\n")
    entries = knownhosts.read([tmp_path / "missing", a, b, tmp_path]).entries
    assert [e.source for e in entries] == [f"{a}:1"]


def test_append_records_one_line_in_a_private_new_file(tmp_path: Path) -> None:
    path = tmp_path / "ssh" / "known_hosts"
    knownhosts.append(path, "[10.0.0.1]:2222", ED, K1)
    knownhosts.append(path, "gpu2", ED, K2)
    assert path.read_text() == f"[10.0.0.1]:2222 {ED} {K1}\ngpu2 {ED} {K2}\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_file_is_parsed_again_only_once_it_changed(tmp_path: Path) -> None:
    f = tmp_path / "known_hosts"
    f.write_text(f"gpu1 {ED} {K1}\n")
    first = knownhosts.read([f, tmp_path / "missing"])
    assert [e.key for e in first.entries] == [K1]
    assert knownhosts.read([f]).files[0] is first.files[0]  # unchanged: the parse kept, not redone
    with f.open("a") as out:  # accept-new records a key: the next connection sees it
        out.write(f"gpu2 {ED} {K2}\n")
    assert [e.key for e in knownhosts.read([f]).entries] == [K1, K2]
    f.write_text(f"gpu1 {ED} {K2}\n")
    g = tmp_path / "other"
    g.write_text(f"gpu1 {ED} {K1}\n")
    g.replace(f)  # the same size, perhaps within the same clock tick: told apart by its text
    assert [e.key for e in knownhosts.read([f]).entries] == [K1]
    f.write_text(f"gpu1 {ED} {K2}\n")
    assert [e.key for e in knownhosts.read([f]).entries] == [K2]


def test_what_a_file_says_of_a_name_is_matched_once_while_the_file_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet-wide known_hosts (hashed: an HMAC per line to match) is matched once per name,
    not once per connection; a revocation in another file still wins, and a changed file is
    matched anew."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(f"{HASHED_GPU1} {ED} {K1}\ngpu1 {ED} {K2}\ngpu2 {ED} {K2}\n")
    b.write_text(f"@revoked gpu1 {ED} {K2}\n")
    matched: list[str] = []
    real = knownhosts._pattern_matches
    monkeypatch.setattr(knownhosts, "_pattern_matches", lambda p, n: matched.append(p) or real(p, n))
    for name in ("gpu1", "gpu2", "gpu3", "gpu1"):
        known = knownhosts.read([a, tmp_path / "missing", b])
        assert known.trusted(name) == knownhosts.trusted(known.entries, name)  # the same answer, kept
    assert [e.key for e in knownhosts.read([a, b]).trusted("gpu1")] == [K1]  # K2 revoked in b
    assert [e.key for e in knownhosts.read([a]).trusted("gpu1")] == [K1, K2]
    matched.clear()
    for _ in range(3):
        assert [e.key for e in knownhosts.read([a, b]).trusted("gpu2")] == [K2]
    assert matched == []  # nothing matched again
    a.write_text(f"gpu2 {ED} {K1}\n")
    assert [e.key for e in knownhosts.read([a, b]).trusted("gpu2")] == [K1]
    assert matched  # the changed file was


def test_a_line_whose_key_does_not_parse_is_skipped_as_openssh_skips_it(tmp_path: Path) -> None:
    """Valid base64 holding no valid key (a truncated ed25519 blob) made paramiko's key class
    raise nacl's ValueError out of the connection; the host's other line is used."""
    truncated = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x03abc").decode()
    path = tmp_path / "known_hosts"
    path.write_text(f"gpu1 {ED} {truncated}\ngpu1 {ED} {K1}\n")
    hop = Hop(label="gpu1", hostname="gpu1", port=22, user="u", known_hosts=(path,))
    client = paramiko.SSHClient()
    hostkeys.prepare(client, hop, host="gpu1")
    assert [k.get_base64() for k in client.get_host_keys().lookup("gpu1").values()] == [K1]
