"""hsm-cli against a real hsmd."""

import json
import subprocess

from hsm import errors
from tests.hsmd import HSM_CLI, free_port


def _cli(*args, address=None):
    command = [HSM_CLI] + (["--address", address] if address else []) + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_ping_prints_json(hsmd):
    done = _cli("ping", address=hsmd.address)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"status": {"code": 0, "message": "OK"}}


def test_any_verb_with_arguments(hsmd):
    done = _cli("getHsmConfig", "rpc", address=hsmd.address)
    assert done.returncode == 0
    assert json.loads(done.stdout)["config"]["rpc"]["port"] == hsmd.port


def test_failed_status_exits_one(hsmd):
    done = _cli("getHsmConfig", "nosuch", address=hsmd.address)
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"]["code"] == 1000


def test_json_arguments_are_typed(hsmd):
    done = _cli("getHsmConfig", '{"not": "a section"}', address=hsmd.address)
    assert done.returncode == 1
    assert "expected a string" in json.loads(done.stdout)["status"]["message"]


def test_fault_exits_two_with_the_reason(hsmd):
    done = _cli("noSuchVerb", address=hsmd.address)
    assert done.returncode == 2
    assert "unknown verb 'noSuchVerb'" in done.stderr


def test_unreachable_hsmd_exits_two():
    address = f"127.0.0.1:{free_port()}"
    done = _cli("ping", address=address)
    assert done.returncode == 2
    assert f"cannot reach hsmd at {address}" in done.stderr


def test_errors_table():
    done = _cli("errors", "--json")
    assert done.returncode == 0
    table = json.loads(done.stdout)
    by_code = {row["code"]: row["name"] for row in table}
    assert by_code[268] == "ImageDoesNotExistInSD"
    assert by_code[401] == "UnknownTask"
    assert by_code[405] == "AddTaskError"
    assert by_code[1000] == "InvalidParameterException"
    assert len(by_code) == len(table), "codes must be unique"
    assert [row["code"] for row in table] == sorted(by_code)
    assert len(table) == len(errors.all_errors())
    plain = _cli("errors").stdout
    assert "  268  ImageDoesNotExistInSD" in plain


def test_new_error_codes_start_at_5000():
    new_names = {"RequestIdConflict", "ConfigError", "NotAvailable", "SupervdsmUnavailable", "SupervdsmCallError",
                 "StorageTimeout", "HookError", "TaskIdExists", "TaskIdRequired", "SupervdsmPeerRefused",
                 "ImageExists", "ImageIsSnapshot", "RepositoryIdInUse", "InvalidFix", "InvalidConnectionURI"}
    for cls in errors.all_errors():
        if cls.__name__ in new_names:
            assert cls.code >= 5000, cls
        else:
            assert cls.code < 5000, cls


def test_config_sample_is_the_shipped_file():
    done = _cli("config", "sample")
    assert done.returncode == 0
    assert "# port = 54324\n" in done.stdout


def test_output_cut_short_is_not_an_error(hsmd):
    """hsm-cli ... | head: a closed pipe is not 'cannot reach hsmd'."""
    done = subprocess.run(f"{HSM_CLI} --address {hsmd.address} getHsmConfig | head -1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout == "{\n"
    assert "cannot reach" not in done.stderr
