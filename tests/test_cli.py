"""hsm-cli against a real hsmd."""

import json
import subprocess

from hsm import errors
from tests.hsmd import HSM_CLI, free_port
from tests.tasks_helpers import diagnostics_config, start_task


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
    """A verb called by name: the whole answer on stdout as ever, and the failure told on stderr too."""
    done = _cli("getHsmConfig", "nosuch", address=hsmd.address)
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"]["code"] == 1000
    assert done.stderr == "hsm-cli: error 1000: Invalid parameter: no section [nosuch]\n"


def test_output_options_before_or_after_the_word(hsmd):
    """-o json, --json and --noheadings work at the top level and after the command word alike."""
    for args in (["-o", "json", "repo", "list"], ["--json", "repo", "list"], ["repo", "list", "-o", "json"],
                 ["repo", "list", "--json"]):
        done = _cli(*args, address=hsmd.address)
        assert done.returncode == 0 and json.loads(done.stdout)["repos"]["local"]["connected"] is True, args
    for args in (["--noheadings", "repo", "list"], ["repo", "list", "--noheadings"]):
        assert _cli(*args, address=hsmd.address).stdout.startswith("local  localfs-1  yes  yes  "), args
    assert _cli("-o", "json", "errors").stdout == _cli("errors", "--json").stdout
    assert json.loads(_cli("ping", address=hsmd.address).stdout)["status"]["code"] == 0  # verbs answer JSON


def test_task_wait_for_an_unknown_task(hsmd):
    done = _cli("task", "wait", "no-such-task", address=hsmd.address)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "hsm-cli: error 401: No such task: no-such-task\n"
    done = _cli("task", "wait", "no-such-task", "-o", "json", address=hsmd.address)
    assert done.returncode == 1 and json.loads(done.stdout)["status"]["code"] == 401


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
                 "ImageExists", "ImageIsSnapshot", "RepositoryIdInUse", "InvalidFix", "InvalidConnectionURI",
                 "HsmdUnavailable", "LsmUnavailable", "ArrayDoesNotExist", "ArrayUnreachable", "ArrayRequestFailed",
                 "ArrayNameConflict", "ArrayPoolDoesNotExist", "ArrayVolumeDoesNotExist", "ArrayNoSpace",
                 "ArrayNoSupport", "ArrayFsDoesNotExist"}
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


def test_task_wait_tells_a_failed_task_on_stderr(make_hsmd):
    daemon = make_hsmd(config=diagnostics_config()).start()
    task_id = start_task(daemon.proxy(), [{"seconds": 0}, {"seconds": 0, "fail": True}])
    done = _cli("task", "wait", task_id, "--interval", "0.05", address=daemon.address)
    assert done.returncode == 1
    assert json.loads(done.stdout[done.stdout.index("{"):])["taskResult"] == "cleanSuccess"
    assert done.stderr.startswith("hsm-cli: error ") and f"task {task_id} ended cleanSuccess: " in done.stderr
