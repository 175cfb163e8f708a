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


def test_of_two_runs_racing_for_the_last_gpu_exactly_one_loses_whoever_looks_first() -> None:
    held = claim("alice", "a", created=900)
    first = claim("alice", "b", created=1000, cid="b" * 64)
    second = claim("alice", "c", created=1001, cid="a" * 64)  # later, though its ID sorts first
    claims = [Claim("gpu1", held), Claim("gpu2", first), Claim("gpu3", second)]
    for order in itertools.permutations(claims):
        assert quota.losers(order, 2) == {second.id}
    # the same second: the ID decides, the same for every run
    tie = [Claim("gpu1", held), Claim("gpu2", claim("alice", "b", created=1000, cid="b" * 64)),
           Claim("gpu3", claim("alice", "c", created=1000, cid="a" * 64))]  # fmt: skip
    assert quota.losers(tie, 2) == {"b" * 64}
    assert quota.losers(claims, 3) == set()
