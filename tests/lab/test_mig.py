"""MIG slices on the lab: a host's replayed H200 split as the captured one (`forge lab gpu
--mig`), its instances listed by `forge gpus` with their holders, taken by `forge migrate
--min-free-memory` by their MIG UUID, with claims and reclaim as whole GPUs have them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LabHandle
from tests.lab.envkit import forge, lab_gpu, migrate, new_env

pytestmark = pytest.mark.lab

HOST = "gpu2"


@pytest.fixture()
def mig_host(lab: LabHandle) -> Iterator[None]:
    """GPU 0 of gpu2 split into MIG instances (device 1 used by the lab's `nobody`), GPUs 1-3 at
    work: only slices are free there. The host's default GPUs again afterwards."""
    try:
        r = lab_gpu(lab, HOST, "--mig", "0", "--slice", "0/1", "--memory", "5000", "--user", "nobody")
        assert r.returncode == 0, r.stderr
        assert "0/3  MIG-" in r.stdout and "MIG 1g.18gb" in r.stdout, r.stdout
        lab.lab.load_gpus(HOST, [1, 2, 3], utilization_pct=90, memory_used_mib=40000)
        yield
    finally:
        lab.lab.reset_gpus(HOST)


def gpus_of(inv: Path) -> dict[str, dict[str, Any]]:
    r = forge(inv, "gpus", HOST, "--json")
    assert r.returncode == 0, r.stderr
    out = {}
    for g in json.loads(r.stdout)["hosts"][0]["gpus"]:
        label = str(g["index"]) if g["mig_device"] is None else f"{g['index']}/{g['mig_device']}"
        out[label] = g
    return out


def test_slices_are_listed_with_their_holders_and_taken_by_memory(
    lab: LabHandle, env_lab: dict[str, Any], mig_host: None, tmp_path: Path
) -> None:
    inv = env_lab["inventory"]
    seen = gpus_of(inv)
    assert list(seen) == ["0", "0/0", "0/1", "0/2", "0/3", "0/4", "1", "2", "3"]
    assert not seen["0"]["free"] and seen["0"]["mig_mode"] == "Enabled"
    assert [p["user"] for p in seen["0/1"]["processes"]] == ["nobody"]  # who holds the slice
    assert not seen["0/0"]["free"]  # it shares GPU instance 2's memory with 0/1
    assert [seen[k]["free"] for k in ("0/2", "0/3", "0/4")] == [True, True, True]
    assert seen["0/3"]["mig_profile"] == "1g.18gb" and seen["0/3"]["memory_total_mib"] == 16384

    whole = forge(inv, "migrate", "--env", new_env(env_lab), "--to", HOST)
    assert whole.returncode != 0 and f"{HOST} has no 1 free GPU(s)" in whole.stderr, whole.stderr  # a whole GPU: none

    first, second, third = new_env(env_lab), new_env(env_lab), new_env(env_lab)
    a = migrate(inv, first, "--to", HOST, "--min-free-memory", "16000")
    assert a["gpu_labels"] == ["0/3"] and a["gpus"] == [seen["0/3"]["uuid"]]  # the smallest that fits
    assert a["gpus"][0].startswith("MIG-")
    requests = lab.docker(HOST, "inspect", "-f", "{{json .HostConfig.DeviceRequests}}", a["container"]).stdout
    assert json.loads(requests)[0]["DeviceIDs"] == a["gpus"]  # the container gets the slice by its MIG UUID
    claims = lab.docker(HOST, "ps", "-a", "--format", "{{.Names}}", "--filter", "label=forge.claim").stdout.split()
    assert f"forge-claim-{a['gpus'][0]}" in claims
    b = migrate(inv, second, "--to", HOST, "--min-free-memory", "16000")
    assert b["gpu_labels"] == ["0/4"]
    quota = tmp_path / "quota.toml"  # a slice counts as a GPU in the quota
    quota.write_text(Path(inv).read_text() + "\n[policy]\nmax_gpus_per_user = 2\n")
    refused = forge(quota, "migrate", "--env", third, "--to", HOST, "--min-free-memory", "16000")
    assert refused.returncode == 1, refused.stderr
    assert "may hold 2 GPU(s) through forge and holds 2 (" in refused.stderr, refused.stderr
    assert all(f"1 on {HOST} for '{e}'" in refused.stderr for e in (first, second)), refused.stderr
    c = migrate(inv, third, "--to", HOST, "--min-free-memory", "16000")
    assert c["gpu_labels"] == ["0/2"]  # 1g.18gb slices taken: the next size up
    held = gpus_of(inv)
    assert [held[k]["free"] for k in ("0/2", "0/3", "0/4")] == [False, False, False]
    assert f"environment {first}" in held["0/3"]["reason"], held["0/3"]
    out = forge(inv, "migrate", "--env", new_env(env_lab), "--to", HOST, "--min-free-memory", "16000")
    assert out.returncode != 0 and "no 1 free GPU(s)" in out.stderr

    # reclaim sees a slice's work by its memory (MIG reports no utilization per instance)
    policy = tmp_path / "hosts.toml"
    policy.write_text(Path(inv).read_text() + '\n[policy]\nidle_after = "1h"\n')
    looks = json.loads(forge(policy, "reclaim", HOST, "--dry-run", "--json").stdout)["environments"]
    assert {e["env"]: e["action"] for e in looks if e["env"] in (first, second)} == {first: "start", second: "start"}
    lab.lab.load_slice(HOST, 0, 3, memory_used_mib=8000, user="nobody")
    looks = json.loads(forge(policy, "reclaim", HOST, "--dry-run", "--json").stdout)["environments"]
    (busy,) = [e for e in looks if e["env"] == first]
    assert (busy["action"], busy["busy"]) == ("busy", "GPU 0/3 has 8009 MiB in use")
    for env in (first, second, third):
        assert forge(inv, "stop", env, "--keep-ssh-config").returncode == 0
