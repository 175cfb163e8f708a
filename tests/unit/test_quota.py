"""GPU quotas as pure functions over host listings: what a user holds, the refusal that says
where, and the one order that decides which of two racing runs keeps its claims."""

from __future__ import annotations

import itertools

import pytest

from forge.env import quota
from forge.env.listing import Claim, Container, HostListing
from forge.labels import CLAIM, CLAIM_CONTAINER, CLAIM_ENV, CLAIM_OWNER

_ids = itertools.count(1)


def claim(owner: str, env: str, *, created: int = 1000, gpu: str | None = None, cid: str | None = None) -> Container:
    n = next(_ids)
    labels = {CLAIM: gpu or f"GPU-{n}", CLAIM_ENV: env, CLAIM_OWNER: owner, CLAIM_CONTAINER: f"forge-{owner}-{env}"}
    return Container(cid or f"{n:064x}", f"forge-claim-GPU-{n}", "img", "created", "Created", created, labels)


def env_container(owner: str, env: str) -> Container:
    return Container(f"e{next(_ids):063x}", f"forge-{owner}-{env}", "img", "running", "Up", 900, {})


def listing(host: str, *containers: Container, now: int = 1010) -> HostListing:
    return HostListing(host, now, containers)


def test_holdings_count_live_claims_of_the_owner_per_host_and_env() -> None:
    a = listing("gpu1", claim("alice", "dev"), claim("alice", "dev"), env_container("alice", "dev"),
                claim("bob", "x"), env_container("bob", "x"))  # fmt: skip
    b = listing("gpu2", claim("alice", "big"), env_container("alice", "big"))
    stale = listing("gpu3", claim("alice", "gone", created=1), now=5000)  # its container is gone, long ago
    mine = quota.claims_of([a, b, stale], "alice", grace_s=60)
    assert quota.holdings(mine) == [quota.Holding("gpu1", "dev", 2), quota.Holding("gpu2", "big", 1)]
    old = {c.container.id for c in mine if c.host == "gpu1"}
    assert quota.holdings(quota.claims_of([a, b], "alice", grace_s=60, ignore=old)) == [
        quota.Holding("gpu2", "big", 1)
    ]  # the environment being migrated is not counted


def test_check_refuses_past_the_quota_saying_what_is_held_where() -> None:
    held = [quota.Holding("gpu1", "dev", 2), quota.Holding("gpu2", "big", 1)]
    quota.check("alice", 4, held, 1)  # 3 + 1 fits
    quota.check("alice", None, held, 100)  # no quota
    with pytest.raises(quota.QuotaExceeded) as e:
        quota.check("alice", 4, held, 2)
    assert e.value.message == (
        "alice may hold 4 GPU(s) through forge and holds 3 (2 on gpu1 for 'dev', 1 on gpu2 for 'big'): "
        "2 more would be 5"
    )
    assert "forge stop ENV" in (e.value.hint or "")
    with pytest.raises(quota.QuotaExceeded, match="holds 0 \\(none\\)"):
        quota.check("bob", 0, [], 1)


def test_of_two_runs_racing_for_the_last_gpu_at_most_one_keeps_it_whoever_looks_first() -> None:
    held = Claim("gpu1", claim("alice", "a", created=900))
    a = Claim("gpu2", claim("alice", "b", created=1000))
    b = Claim("gpu3", claim("alice", "c", created=1001))
    # A checks before B has claimed: alone with what was held, it keeps its claim
    assert not quota.came_second([held, a], {a.container.id}, 2)
    # B checks and sees A's claim, made before its own: B gives its claim back
    assert quota.came_second([held, a, b], {b.container.id}, 2)
    # had A checked after B claimed, it still keeps its own: B's was made later
    assert not quota.came_second([held, a, b], {a.container.id}, 2)
    assert not quota.came_second([held, a, b], {b.container.id}, 3)  # room for both


def test_claims_of_the_same_second_count_against_the_run_that_checks() -> None:
    held = Claim("gpu1", claim("alice", "a", created=900))
    a = Claim("gpu2", claim("alice", "b", created=1000))
    b = Claim("gpu3", claim("alice", "c", created=1000))
    # whichever checks, the other's claim of the same second is ahead: both stop, none keeps
    # a GPU past the quota (the docstring's "run again")
    assert quota.came_second([held, a, b], {a.container.id}, 2)
    assert quota.came_second([held, a, b], {b.container.id}, 2)
    # but a run that checks before the other claimed keeps its own
    assert not quota.came_second([held, a], {a.container.id}, 2)


def test_a_run_with_several_gpus_counts_the_claims_made_up_to_its_last() -> None:
    mine = [Claim("gpu2", claim("alice", "b", created=t)) for t in (1000, 1002)]
    other = Claim("gpu3", claim("alice", "c", created=1001))
    ids = {c.container.id for c in mine}
    assert quota.came_second([*mine, other], ids, 2)
    assert not quota.came_second([*mine, other], ids, 3)
    assert not quota.came_second([other], ids, 0)  # none of its claims seen: nothing to give back


def test_creation_times_from_the_host_are_read_strictly() -> None:
    cid = "ab" * 32
    out = quota.parse_created(
        f"{cid} 2026-11-29T04:30:01.123456789Z\n"
        f"{'cd' * 32} 2026-11-29T04:30:01Z\n"
        f"{'ef' * 32} 2026-11-29T04:30:01.5+02:00\n"  # not UTC as docker writes it: left out
        "garbage\n"
        f"{cid[:12]} 2026-11-29T04:30:01Z\n"  # a short ID: left out
    )
    assert out == {cid: pytest.approx(1795926601.123456789, abs=1e-6), "cd" * 32: 1795926601.0}


def test_an_environment_label_that_is_not_a_name_is_not_quoted_back() -> None:
    planted = Claim("gpu1", claim("alice", "\x1b]0;owned\x07<b>"))
    assert quota.holdings([planted]) == [quota.Holding("gpu1", "?", 1)]
