"""Inventory loading: every class of error names the file, the host and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge import inventory
from forge.errors import InventoryError, TargetError

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[[hosts]]
name = "gpu1"
address = "10.0.0.1"
"""


def load(tmp_path: Path, text: str) -> inventory.Inventory:
    p = tmp_path / "hosts.toml"
    p.write_text(text)
    return inventory.load_file(p)


def error(tmp_path: Path, text: str) -> InventoryError:
    with pytest.raises(InventoryError) as ei:
        load(tmp_path, text)
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path / "hosts.toml")), msg
    return ei.value


def test_example_inventory_in_repo_is_valid() -> None:
    inv = inventory.load_file(REPO / "hosts.toml")
    assert inv.names == ["gpu1", "gpu2", "gpu3", "workstation"]
    gpu2 = inv.host("gpu2")
    assert (gpu2.user, gpu2.port, gpu2.host_key_policy) == ("alice", 2222, "strict")
    gpu3 = inv.host("gpu3")
    assert gpu3.ssh_target == "gpu3" and gpu3.docker_host == "unix:///run/user/1000/docker.sock"
    # host overrides merge over the fleet's [defaults]-level policy
    assert gpu3.gpu_policy.max_memory_used_mib == 4096
    assert inv.gpu_policy.max_memory_used_mib == 1024
    assert inv.host("workstation").local
    assert inv.environment.ssh_port_range == (2200, 2299)
    assert inv.data.path == "/srv/datasets"


def test_defaults_apply_and_host_wins(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
[defaults]
user = "bob"
port = 2200
connect_timeout = 3
[[hosts]]
name = "a"
address = "10.0.0.1"
[[hosts]]
name = "b"
address = "10.0.0.2"
user = "carol"
""",
    )
    a, b = inv.hosts
    assert (a.user, a.port, a.connect_timeout) == ("bob", 2200, 3.0)
    assert (b.user, b.port) == ("carol", 2200)


def test_unknown_host_key_with_suggestion(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + 'adress = "x"\n')
    assert e.host == "gpu1" and e.key == "adress"
    assert "unknown key" in str(e) and "did you mean 'address'?" in str(e)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "[enviroment]\nname='x'\n")
    assert e.key == "enviroment" and "did you mean 'environment'?" in str(e)


def test_unknown_key_in_nested_table(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "[hosts.gpu_policy]\nmax_util = 3\n")
    assert e.host == "gpu1" and e.key == "gpu_policy.max_util"
    assert "did you mean 'max_utilization_pct'?" in str(e)


def test_unknown_key_in_defaults(tmp_path: Path) -> None:
    e = error(tmp_path, "[defaults]\nusr = 'x'\n" + MINIMAL)
    assert e.host is None and e.key == "defaults.usr" and "did you mean 'user'?" in str(e)


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("port = '22'", "port", "must be an integer, not a string"),
        ("port = 70000", "port", "must be a TCP port"),
        ("port = true", "port", "must be an integer, not a boolean"),
        ("tags = 'a100'", "tags", "must be a list, not a string"),
        ("tags = ['a', 3]", "tags[1]", "must be a string, not an integer"),
        ("local = 'yes'", "local", "must be true or false"),
        ("connect_timeout = -1", "connect_timeout", "must be positive"),
        ("host_key_policy = 'accept_new'", "host_key_policy", "did you mean 'accept-new'?"),
        ("user = ''", "user", "must not be empty"),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, key: str, words: str) -> None:
    e = error(tmp_path, MINIMAL + line + "\n")
    assert (e.host, e.key) == ("gpu1", key)
    assert words in str(e)


def test_wrong_type_in_environment(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "[environment]\ngpus = 'two'\n")
    assert e.key == "environment.gpus" and "must be an integer" in str(e)


def test_bad_port_range(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "[environment]\nssh_port_range = [3000, 2000]\n")
    assert e.key == "environment.ssh_port_range"


def test_duplicate_names(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + MINIMAL)
    assert e.host == "gpu1" and e.key == "name" and "duplicate host name" in str(e)


def test_missing_name(tmp_path: Path) -> None:
    e = error(tmp_path, "[[hosts]]\naddress = '10.0.0.1'\n")
    assert e.host == "#1" and e.key == "name" and "missing required key" in str(e)


def test_missing_address(tmp_path: Path) -> None:
    e = error(tmp_path, "[[hosts]]\nname = 'gpu9'\n")
    assert e.host == "gpu9" and e.key == "address"


def test_no_hosts(tmp_path: Path) -> None:
    e = error(tmp_path, "[defaults]\nuser = 'x'\n")
    assert e.key == "hosts" and "no hosts" in str(e)


def test_hosts_written_as_single_table(tmp_path: Path) -> None:
    e = error(tmp_path, "[hosts]\nname = 'x'\n")
    assert "[[hosts]]" in str(e)


@pytest.mark.parametrize(
    ("text", "host", "key"),
    [
        (MINIMAL + "password = 'hunter2'\n", "gpu1", "hosts[0].password"),
        ("[defaults]\nssh_password = 'x'\n" + MINIMAL, None, "defaults.ssh_password"),
        (MINIMAL + "[data]\naddress='d'\npath='/d'\npassphrase='x'\n", None, "data.passphrase"),
        (MINIMAL + "[hosts.gpu_policy]\nsecret = 1\n", "gpu1", "hosts[0].gpu_policy.secret"),
    ],
)
def test_password_anywhere_is_refused(tmp_path: Path, text: str, host: str | None, key: str) -> None:
    e = error(tmp_path, text)
    assert (e.host, e.key) == (host, key)
    assert "passwords and secrets are not accepted" in str(e) and "SSH key" in str(e)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    e = error(tmp_path, "[[hosts]]\nname = \n")
    assert "not valid TOML" in str(e) and "line 2" in str(e)


def test_data_needs_address_and_path(tmp_path: Path) -> None:
    e = error(tmp_path, MINIMAL + "[data]\naddress = 'nas'\n")
    assert e.key == "data.path"


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORGE_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert inventory.find_inventory() is None
    assert inventory.load().hosts[0].local
    user = tmp_path / "cfg" / "forge" / "hosts.toml"
    user.parent.mkdir(parents=True)
    user.write_text(MINIMAL)
    assert inventory.find_inventory() == user
    here = tmp_path / "hosts.toml"
    here.write_text(MINIMAL)
    assert inventory.find_inventory() == here
    env = tmp_path / "env.toml"
    env.write_text(MINIMAL)
    monkeypatch.setenv("FORGE_INVENTORY", str(env))
    assert inventory.find_inventory() == env
    flag = tmp_path / "flag.toml"
    flag.write_text(MINIMAL)
    assert inventory.find_inventory(str(flag)) == flag
    with pytest.raises(InventoryError, match="no such inventory file"):
        inventory.find_inventory(str(tmp_path / "missing.toml"))


def test_select_targets(tmp_path: Path) -> None:
    inv = inventory.load_file(REPO / "hosts.toml")
    assert [h.name for h in inv.select("all")] == inv.names
    assert [h.name for h in inv.select(["a100"])] == ["gpu1", "gpu2"]
    assert [h.name for h in inv.select(["gpu3,gpu1"])] == ["gpu3", "gpu1"]
    assert [h.name for h in inv.select(["gpu1", "a100"])] == ["gpu1", "gpu2"]
    with pytest.raises(TargetError, match="did you mean 'gpu1'"):
        inv.select(["gpu01"])
    assert [h.name for h in inv.select(None)] == inv.names
    for empty in ("", [""], [" , "]):
        with pytest.raises(TargetError, match="no host named"):
            inv.select(empty)


def test_an_inventory_behind_a_directory_the_user_may_not_enter_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was 'internal error: PermissionError' (found running forge as an ordinary user; the
    lab test test_client runs forge so). Here the stat of a path in a directory this user may
    not enter fails as it does for such a user (the tests may run as root, who may enter any)."""

    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(InventoryError, match="cannot read the file: Permission denied") as e:
        inventory.find_inventory(str(tmp_path / "locked" / "hosts.toml"))
    assert str(tmp_path / "locked" / "hosts.toml") in str(e.value)


def test_history_settings_are_checked_with_the_key_named() -> None:
    from forge.inventory import parse

    base = '[[hosts]]\nname = "a"\naddress = "x"\n[history]\n'
    inv = parse(base + 'keep_samples = "3h"\npath = "~/h.sqlite"\n')
    assert inv.history.seconds("keep_samples") == 10800 and inv.history.seconds("keep_hours") == 90 * 86400
    for bad, message in [
        ('keep_samples = "1h"', "key 'history.keep_samples': must be at least 2h"),
        ('keep_hours = "soon"', "key 'history.keep_hours': 'soon' is not a duration"),
        ("idle_utilization_pct = 120", "key 'history.idle_utilization_pct': must be a percentage"),
        ('kep_days = "1y"', "key 'history.kep_days': unknown key (did you mean 'keep_days'?)"),
        ("max_gap = 5", "key 'history.max_gap': must be a string"),
    ]:
        with pytest.raises(InventoryError) as e:
            parse(base + bad + "\n")
        assert message in str(e.value), str(e.value)


def test_policy_quota_fleet_wide_with_per_user_overrides() -> None:
    from forge.inventory import parse

    base = '[[hosts]]\nname = "a"\naddress = "x"\n'
    assert parse(base).policy.quota("alice") is None  # no [policy]: no quota
    inv = parse(base + "[policy]\nmax_gpus_per_user = 4\n[policy.max_gpus]\nalice = 8\nbob = 0\n")
    assert (inv.policy.quota("alice"), inv.policy.quota("bob"), inv.policy.quota("carol")) == (8, 0, 4)
    only = parse(base + "[policy.max_gpus]\nalice = 2\n")
    assert (only.policy.quota("alice"), only.policy.quota("bob")) == (2, None)
    for bad, message in [
        ("[policy]\nmax_gpus_per_user = -1", "key 'policy.max_gpus_per_user': must not be negative"),
        ('[policy]\nmax_gpus_per_user = "4"', "key 'policy.max_gpus_per_user': must be an integer"),
        ("[policy]\nmax_gpu_per_user = 4", "key 'policy.max_gpu_per_user': unknown key (did you mean"),
        ("[policy]\nmax_gpus = 3", "key 'policy.max_gpus': must be a table of user = GPUs"),
        ('[policy.max_gpus]\nalice = "lots"', "key 'policy.max_gpus.alice': must be an integer"),
    ]:
        with pytest.raises(InventoryError) as e:
            parse(base + bad + "\n")
        assert message in str(e.value), str(e.value)
    with pytest.raises(InventoryError, match="key 'policy': must be a table"):
        parse("policy = 3\n" + base)


def test_a_registry_is_an_address_and_a_namespace_and_never_a_secret(tmp_path: Path) -> None:
    inv = load(tmp_path, MINIMAL + '[registry]\naddress = "registry.lab:5000"\n')
    assert inv.registry == inventory.RegistrySettings("registry.lab:5000", "forge")
    assert load(
        tmp_path, MINIMAL + '[registry]\naddress = "[fd00::1]:443"\nnamespace = "ml/team"\n'
    ).registry.namespace == ("ml/team")
    assert load(tmp_path, MINIMAL).registry.address is None
    for bad, key in (
        ('address = "https://registry.lab"', "registry.address"),
        ('address = "reg lab"', "registry.address"),
        ('address = "registry.lab"\nnamespace = "Team"', "registry.namespace"),
        ('address = "registry.lab"\nnamespace = "a//b"', "registry.namespace"),
        ('address = "registry.lab"\nuser = "me"', "registry.user"),
        ('address = "registry.lab"\npassword = "x"', "password"),
    ):
        msg = str(error(tmp_path, MINIMAL + "[registry]\n" + bad + "\n"))
        assert key in msg, msg
