"""What forge remembers of manifests (forge.images.memo): a hint, checked against targets."""

from __future__ import annotations

import json
from pathlib import Path

from forge.images import memo

C1, M1 = "sha256:" + "1" * 64, "sha256:" + "a" * 64
C2, M2 = "sha256:" + "2" * 64, "sha256:" + "b" * 64


def test_a_pair_is_remembered_and_found_again(isolated_home: Path) -> None:
    assert memo.manifest_for(C1) is None
    memo.remember(C1, M1)
    memo.remember(C2, M2)
    assert memo.manifest_for(C1) == M1 and memo.manifest_for(C2) == M2
    assert memo.path() == isolated_home / ".cache" / "forge" / "manifests.json"
    assert memo.path().parent.stat().st_mode & 0o777 == 0o700


def test_garbage_is_neither_written_nor_read(isolated_home: Path) -> None:
    memo.remember("not a digest", M1)
    assert not memo.path().exists()
    memo.path().parent.mkdir(parents=True)
    memo.path().write_text("{not json")
    assert memo.manifest_for(C1) is None
    memo.path().write_text(json.dumps({C1: "../../etc/passwd", "x": "y"}))
    assert memo.manifest_for(C1) is None
    memo.remember(C1, M1)  # a broken file is replaced, not an error
    assert memo.manifest_for(C1) == M1


def test_a_digest_with_a_trailing_newline_is_not_one(isolated_home: Path) -> None:
    memo.remember(C1, M1 + "\n")  # an ID a host reported, "\n" and all
    assert not memo.path().exists()
    memo.path().parent.mkdir(parents=True)
    memo.path().write_text(json.dumps({C1: M1 + "\n", C2 + "\n": M2}))
    assert memo.manifest_for(C1) is None and memo.manifest_for(C2 + "\n") is None
