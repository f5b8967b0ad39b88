"""vdsm_shim as VDSM uses it: a proxy to a real hsmd (Unix socket or TCP), or hsm in-process without one."""

import inspect
import threading
import time
import xmlrpc.client

import pytest

from tests.hsmd import free_port
from tests.images_helpers import MiB, ok, wait_image
from tests.legacy_helpers import BLANK, SD
from tests.test_legacy_volumes import IMG, IMG2, VOL1, VOL2, finished
from vdsm_shim import APIBase, ServiceProxy, choose
from vdsm_shim.inprocess import InProcess
from vdsm_shim.local import TASK_VERBS


@pytest.fixture
def shim_hsmd(make_hsmd, tmp_path):
    """hsmd in its default (non-transparent) task mode, also on a Unix socket of its own."""
    socket_path = str(tmp_path / "hsmd.sock")
    daemon = make_hsmd(config={"rpc": {"unix_socket": socket_path}}).start()
    return daemon, "unix:" + socket_path


@pytest.fixture(autouse=True)
def fresh_choice():
    yield
    APIBase.forget_choice()


def test_a_proxy_to_hsmd_is_true_and_puts_it_in_transparent_mode(shim_hsmd):
    daemon, address = shim_hsmd
    with ServiceProxy(address) as proxy:
        assert proxy
        assert ok(proxy.getCapabilities())["info"]["taskMode"] == "transparent"  # VDSM's task ids name hsmd's
        disk = ok(proxy.createVirtualDisk("local", str(MiB), "", {}, {"taskId": "vdsm-task-1"}))["imageId"]
        wait_image(proxy, "local", disk)
        assert ok(proxy.getTaskStatus("vdsm-task-1"))["taskStatus"]["taskResult"] == "success"


def test_no_hsmd_makes_a_false_proxy_at_once(tmp_path):
    begin = time.monotonic()
    assert not ServiceProxy(f"127.0.0.1:{free_port()}")
    assert not ServiceProxy("unix:" + str(tmp_path / "nobody.sock"))
    assert time.monotonic() - begin < 5


def test_the_local_socket_is_the_default_where_hsm_conf_names_it(shim_hsmd, tmp_path):
    daemon, address = shim_hsmd
    conf = tmp_path / "vdsm-host-hsm.conf"
    conf.write_text(f"[rpc]\nunix_socket = {address[len('unix:'):]}\n")
    with ServiceProxy(config_path=str(conf)) as proxy:
        assert proxy.address == address and proxy


def test_an_outage_fails_fast_and_the_proxy_comes_back_by_itself(shim_hsmd):
    daemon, address = shim_hsmd
    with ServiceProxy(address) as proxy:
        assert ok(proxy.ping())
        daemon.kill()
        begin = time.monotonic()
        answer = proxy.ping()
        assert answer["status"]["code"] == 5015 and time.monotonic() - begin < 5
        daemon.start()  # in non-transparent mode, as configured
        assert ok(proxy.ping())
        assert ok(proxy.getCapabilities())["info"]["taskMode"] == "transparent"  # switched again


@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_a_restart_between_two_calls_is_switched_to_transparent_mode_too(shim_hsmd, over):
    """No call while hsmd was away: the next one finds its kept-alive connection closed, and must not be
    sent again silently to the new hsmd before that is switched (the stdlib's transport would)."""
    daemon, address = shim_hsmd
    with ServiceProxy(address if over == "unix" else daemon.address) as proxy:
        assert ok(proxy.ping())
        daemon.kill()
        daemon.start()  # in non-transparent mode, as configured
        assert ok(proxy.getCapabilities())["info"]["taskMode"] == "transparent"


def test_vdsm_threads_share_one_proxy(shim_hsmd):
    daemon, address = shim_hsmd
    proxy = ServiceProxy(address)
    answers: list[int] = []

    def calls() -> None:
        for _ in range(20):
            answers.append(proxy.getImageList("local")["status"]["code"])

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    proxy.close()
    assert answers == [0] * 160


def test_in_process_answers_as_hsmd_does(shim_hsmd, tmp_path):
    """One small flow both ways: the same answers, ids and paths aside."""
    daemon, address = shim_hsmd
    here = InProcess({"state_dir": str(tmp_path / "in-process"), "sd_health_check_delay": 1,
                      "not_an_hsm_option": "VDSM has many"})
    try:
        assert here.config.tasks.mode == "transparent"
        remote = ServiceProxy(address)
        seen: list = []
        for irs in (remote, here):
            flows = []
            disk = ok(irs.createVirtualDisk("local", str(MiB), "", {"name": "d"}, {"taskId": f"t-{id(irs)}"}))
            wait_image(irs, "local", disk["imageId"])
            info = ok(irs.getImageInfo("local", disk["imageId"]))["image"]
            flows.append((info["state"], info["kind"], info["size"], info["userData"], len(info["volumes"])))
            flows.append(irs.removeImage("local", "no-such-image", {})["status"]["code"])
            flows.append(irs.createVirtualDisk("local", "-1", "", {}, {"taskId": "x"})["status"]["code"])
            with pytest.raises(xmlrpc.client.Fault) as fault:
                irs.noSuchVerb()
            flows.append(fault.value.faultCode)
            if irs is here:
                assert flows == seen
            seen = flows
    finally:
        remote.close()
        here.close()


def test_api_base_chooses_once_and_can_be_forced(shim_hsmd, tmp_path, caplog):
    daemon, address = shim_hsmd
    caplog.set_level("INFO", logger="vdsm_shim")

    class Storage(APIBase):
        pass

    first, second = Storage(address=address), Storage(address=f"127.0.0.1:{free_port()}")
    assert isinstance(first._irs, ServiceProxy) and second._irs is first._irs  # made once, by the first
    assert sum("VDSM's storage: hsmd at" in r.message for r in caplog.records) == 1
    APIBase.forget_choice()
    nowhere = f"127.0.0.1:{free_port()}"
    irs = {"state_dir": str(tmp_path / "fallback")}
    assert isinstance(Storage(irs, address=nowhere)._irs, InProcess)  # hsmd does not answer: in-process
    APIBase.forget_choice()
    assert isinstance(Storage({**irs, "hsm": "hsmd"}, address=nowhere)._irs, ServiceProxy)  # forced
    APIBase.forget_choice()
    assert isinstance(Storage({**irs, "hsm": "in-process"}, address=address)._irs, InProcess)
    with pytest.raises(ValueError):
        choose({"hsm": "sometimes"})


def test_the_shim_knows_where_options_go_in_every_verb_that_starts_a_task(tmp_path):
    """vdsm_shim's table of task verbs (the arguments VDSM always gives, the defaults of the rest) is hsmd's
    own signatures: a padded call means exactly what VDSM's shorter one meant."""
    here = InProcess({"state_dir": str(tmp_path / "state")})
    try:
        for verb, (given, defaults) in TASK_VERBS.items():
            form = here.app.dispatcher.verbs[verb]
            form = form.other if form.other is not None else form  # copyImage: VDSM's form
            params = [p for p in form.signature.parameters.values() if p.name != "options"]
            required = [p for p in params if p.default is inspect.Parameter.empty]
            assert len(required) == given, verb
            assert tuple(p.default for p in params[given:]) == defaults, verb
    finally:
        here.close()


def test_vdsm_task_ids_name_hsmd_tasks_without_changing_the_call(shim_hsmd, tmp_path):
    """VDSM passes `lambda: vars.task.id`; its calls stay as they were, and the tasks carry its ids."""
    daemon, _ = shim_hsmd
    current: list[str | None] = [None]
    remote = ServiceProxy(daemon.address, task_id=lambda: current[0])
    here = InProcess({"state_dir": str(tmp_path / "state")}, task_id=lambda: current[0])
    try:
        for irs, folder in ((remote, tmp_path / "hsmd-storage"), (here, tmp_path / "in-process-storage")):
            folder.mkdir()
            ok(irs.createStorageDomain(4, SD, "data", str(folder), 1, 3))
            current[0] = f"vdsm-create-{folder.name}"
            assert ok(irs.createVolume(SD, BLANK, IMG, 2048, 4, 2, "DATA", VOL1, ""))["uuid"] == current[0]
            finished(irs, current[0])
            explicit = ok(irs.createVolume(SD, BLANK, IMG2, 2048, 4, 2, "DATA", VOL2, "", "", "",
                                           {"taskId": f"caller-{folder.name}"}))["uuid"]
            assert explicit == f"caller-{folder.name}"  # options the caller gave are left alone
            finished(irs, explicit)
            current[0] = None  # no VDSM task around this call: hsmd names the task
            named = ok(irs.deleteImage(SD, BLANK, IMG, "false"))["uuid"]
            assert named != explicit and not named.startswith(("vdsm", "caller"))
            finished(irs, named)
    finally:
        remote.close()
        here.close()
