"""`[notify] command`: a real subprocess each time (a shell writing what it got to a file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from forge.errors import InventoryError
from forge.inventory import parse
from forge.notify import notify


def test_a_string_runs_with_sh_and_gets_the_event_in_variables(tmp_path: Path) -> None:
    out = tmp_path / "got"
    cmd = f'printf "%s|%s|%s|%s" "$FORGE_EVENT" "$FORGE_ENV" "$FORGE_GPUS" "$FORGE_HOST" > {out}'
    fields = {"env": "dev", "gpus": ("GPU-a", "GPU-b"), "host": "gpu1\nrm -rf /"}
    assert notify(cmd, "launched", fields) is None
    # a value from a host stays in its variable, on one line: never on the command line
    assert out.read_text() == "launched|dev|GPU-a,GPU-b|gpu1 rm -rf /"


def test_a_list_is_the_argv_and_its_output_is_not_forges(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "got"
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['FORGE_HOST']); print('noise')"
    assert notify([sys.executable, "-c", code], "gpus_free", {"host": "gpu3"}) is None
    assert out.read_text() == "gpu3"
    assert capfd.readouterr().out == ""  # forge's --json stays clean


def test_failures_become_warnings_not_errors() -> None:
    assert notify(None, "launched", {}) is None
    failed = notify("echo first >&2; echo 'mail: no such user' >&2; exit 3", "launched", {})
    assert failed == "the notify command failed for event 'launched' (exit status 3): mail: no such user"
    slow = notify("sleep 5", "launched", {}, timeout=0.5)
    assert slow == "the notify command ran past 0.5 s for event 'launched'; it was stopped"
    missing = notify(["/nonexistent/notifier"], "launched", {})
    assert missing is not None and missing.startswith("the notify command could not run for event 'launched'")
    with pytest.raises(ValueError, match="unknown event"):
        notify("true", "exploded", {})


def test_the_inventory_takes_a_string_or_an_argv() -> None:
    base = '[[hosts]]\nname = "a"\naddress = "x"\n'
    assert parse(base).notify.command is None
    assert parse(base + '[notify]\ncommand = "mail -s forge me"\n').notify.command == "mail -s forge me"
    assert parse(base + '[notify]\ncommand = ["notify-send", "forge"]\n').notify.command == ("notify-send", "forge")
    for bad, message in [
        ("command = []", "key 'notify.command': must not be empty"),
        ("command = 3", "key 'notify.command': must be a string"),
        ("commnd = 'x'", "key 'notify.commnd': unknown key (did you mean 'command'?)"),
        ("command = ['a', 1]", "key 'notify.command[1]': must be a string"),
    ]:
        with pytest.raises(InventoryError) as e:
            parse(base + "[notify]\n" + bad + "\n")
        assert message in str(e.value), str(e.value)
