"""hsm.conf: typed options, clear refusals, and hsm-cli config dump."""

import json
import subprocess

import pytest

from hsm import config as hsmconfig
from hsm.errors import ConfigError
from tests.hsmd import HSM_CLI, HSMD, write_config


def _start(tmp_path, sections, listen="127.0.0.1:1"):
    path = write_config(str(tmp_path / "hsm.conf"), sections)
    return subprocess.run([HSMD, "--config", path, "--listen", listen, "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("sections, named", [
    ({"rpc": {"threads": "many"}}, "[rpc] threads = 'many': expected integer"),
    ({"rpc": {"ssl": "maybe"}}, "[rpc] ssl = 'maybe': expected boolean"),
    ({"tasks": {"mode": "sometimes"}}, "[tasks] mode = 'sometimes'"),
    ({"rpc": {"thread": "4"}}, "unknown [rpc] thread"),
    ({"rcp": {"threads": "4"}}, "unknown [rcp]"),
    ({"irs": {"qcow2_compat": "2"}}, "[irs] qcow2_compat = '2'"),
    ({"irs": {"lv_activation": "dm"}}, "[irs] lv_activation = 'dm'"),
    ({"irs": {"maximum_allowed_pvs": "16"}},
     "[irs] maximum_allowed_pvs = '16': not supported yet (comes with block repositories)"),
    ({"offload": {"enabled": "no way"}}, "[offload] enabled = 'no way': expected boolean"),
    ({"irs": {"use_volume_leases": "maybe"}}, "[irs] use_volume_leases = 'maybe'"),
])
def test_bad_config_stops_hsmd_naming_the_option(tmp_path, sections, named):
    done = _start(tmp_path, sections)
    assert done.returncode == 2
    assert named in done.stderr


def test_missing_config_file_is_named(tmp_path):
    done = subprocess.run([HSMD, "--config", str(tmp_path / "none.conf"), "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "none.conf" in done.stderr


def test_non_loopback_without_tls_is_refused(tmp_path):
    done = _start(tmp_path, {}, listen="0.0.0.0:54399")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without TLS" in done.stderr


def test_ssl_without_its_files_is_refused(tmp_path):
    done = _start(tmp_path, {"rpc": {"ssl": "true", "key_file": str(tmp_path / "k.pem")}})
    assert done.returncode == 2
    assert "[rpc] key_file" in done.stderr


def test_defaults_and_types():
    config = hsmconfig.load()
    assert config.rpc.port == 54324
    assert config.rpc.host == "127.0.0.1"
    assert config.rpc.ssl is False
    assert config.supervdsm.mode == 0o660
    assert config.tasks.max_tasks == 500
    assert config.supervdsm.allowed_uids == ["0"]


def test_file_values_override_defaults(tmp_path):
    path = write_config(str(tmp_path / "hsm.conf"), {"supervdsm": {"allowed_uids": "0, hsm", "mode": "0640"}})
    config = hsmconfig.load(path)
    assert config.supervdsm.allowed_uids == ["0", "hsm"]
    assert config.supervdsm.mode == 0o640


def test_options_still_coming_take_their_default_only_and_are_not_shown(tmp_path):
    """VDSM's [irs] copied as it is (defaults) loads; hsm-cli config sample and getHsmConfig leave them out."""
    coming = [opt for opt in hsmconfig.OPTIONS.values() if opt.coming]
    assert "maximum_allowed_pvs" in {opt.name for opt in coming}
    sections: dict[str, dict[str, str]] = {}
    for opt in coming:
        sections.setdefault(opt.section, {})[opt.name] = opt.default
    config = hsmconfig.load(write_config(str(tmp_path / "hsm.conf"), sections))
    shown = config.as_wire()
    for opt in coming:
        assert opt.name not in shown.get(opt.section, {})
        assert f"{opt.name} =" not in hsmconfig.sample()


def test_every_option_has_a_description_and_a_parsable_default():
    for opt in hsmconfig.OPTIONS.values():
        assert opt.description, opt
        opt.parse(opt.default)


def test_override_of_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"\[rpc\] nosuch"):
        hsmconfig.load(None, {("rpc", "nosuch"): "1"})


def test_cli_config_dump_of_a_running_hsmd(make_hsmd):
    daemon = make_hsmd(config={"tasks": {"max_tasks": 7}}).start()
    done = subprocess.run([HSM_CLI, "--address", daemon.address, "config", "dump"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "[tasks]\nmode = non-transparent\nthread_pool_size = 10\nmax_tasks = 7\n" in done.stdout
    assert f"port = {daemon.port}\n" in done.stdout


def test_cli_config_dump_round_trips(tmp_path, make_hsmd):
    """What `config dump` prints is an hsm.conf that gives the same config again."""
    daemon = make_hsmd(config={"supervdsm": {"mode": "0600", "allowed_uids": "0, 36"}}).start()
    dumped = subprocess.run([HSM_CLI, "--address", daemon.address, "config", "dump"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    path = tmp_path / "dumped.conf"
    path.write_text(dumped)
    as_json = subprocess.run([HSM_CLI, "config", "dump", "--json", "--config", str(path)],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(as_json) == daemon.proxy().getHsmConfig()["config"]
    assert json.loads(as_json)["supervdsm"]["mode"] == 0o600


def test_cli_config_dump_of_a_bad_file(tmp_path):
    path = write_config(str(tmp_path / "bad.conf"), {"rpc": {"port": "http"}})
    done = subprocess.run([HSM_CLI, "config", "dump", "--config", path], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "[rpc] port = 'http'" in done.stderr


@pytest.mark.parametrize("value, size", [("1073741824", 2**30), (512, 512), ("0", 0),
                                         ("107374182400", 100 * 2**30), (" 512 ", 512), ("0" * 30 + "512", 512),
                                         ("18446744073709551616", 2**64)])
def test_sizes_read_from_strings_or_ints(value, size):
    from hsm.sizes import format_size, parse_size
    assert parse_size("size", value) == size
    assert format_size(size) == str(size)


@pytest.mark.parametrize("value", ["-1", -1, "1.5", "1e9", "", True, None, "0x10", "²", "١٢", "5\u0663", "+5",
                                   "1_000", "9" * 5000, "1" + "0" * 20], ids=lambda value: repr(value)[:24])
def test_bad_sizes_are_invalid_parameters(value):
    from hsm.errors import InvalidParameterException
    from hsm.sizes import parse_size
    with pytest.raises(InvalidParameterException):
        parse_size("size", value)


def test_size_options_are_byte_counts_sent_as_strings(tmp_path):
    path = write_config(str(tmp_path / "hsm.conf"), {"rpc": {"max_request_bytes": "4096"}})
    config = hsmconfig.load(path)
    assert config.rpc.max_request_bytes == 4096  # hsmd itself works with an int
    assert hsmconfig.OPTIONS[("rpc", "max_request_bytes")].type_name == "bytes"
    assert config.as_wire("rpc")["rpc"]["max_request_bytes"] == "4096"
    assert config.as_wire("rpc")["rpc"]["port"] == 54324
    with pytest.raises(ConfigError, match=r"\[rpc\] max_request_bytes = '-1': expected bytes"):
        hsmconfig.load(None, {("rpc", "max_request_bytes"): "-1"})
