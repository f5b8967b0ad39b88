"""What a packager checks: the systemd units, the RPM's contents, the shipped hsm.conf."""

import configparser
import json
import os
import shutil
import subprocess
import sys

import pytest

import hsm
from hsm import config as hsmconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


def _unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(os.path.join(REPO, "etc/systemd", name))
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """verify checks that ExecStart exists; the copies point it at this venv's entry points."""
    paths = []
    for name in ("hsmd.service", "supervdsmd.service"):
        with open(os.path.join(REPO, "etc/systemd", name)) as f:
            text = f.read()
        text = text.replace("ExecStart=/usr/bin/", f"ExecStart={VENV_BIN}/")
        text = text.replace("ExecStart=/usr/sbin/", f"ExecStart={VENV_BIN}/")
        path = tmp_path / name
        path.write_text(text)
        paths.append(str(path))
    done = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "verify warns about nothing"


def test_hsmd_unit_is_notify_after_supervdsmd():
    unit = _unit("hsmd.service")
    assert unit["Service"]["Type"] == "notify"
    assert unit["Service"]["ExecStart"] == "/usr/bin/hsmd"
    assert "supervdsmd.service" in unit["Unit"]["Wants"].split()
    assert "supervdsmd.service" in unit["Unit"]["After"].split()
    timeout = int(unit["Service"]["TimeoutStopSec"])
    assert timeout > hsmconfig.load().rpc.shutdown_timeout, "systemd must not kill calls hsmd lets finish"


def test_hsmd_unit_runs_unprivileged_and_sandboxed():
    service = _unit("hsmd.service")["Service"]
    assert service["User"] == "hsm" and service["Group"] == "hsm"
    assert service["NoNewPrivileges"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["ProtectSystem"] == "strict"
    writable = {path.lstrip("-") for path in service["ReadWritePaths"].split()}
    shipped = hsmconfig.load(os.path.join(REPO, "etc/hsm/hsm.conf"))
    assert {shipped.irs.state_dir, shipped.logging.log_dir, os.path.dirname(shipped.rpc.unix_socket),
            shipped.irs.repository} <= writable, "hsmd can write where its configuration sends it"
    assert shipped.supervdsm.log_dir not in writable


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_hsmd_unit_exposure_is_low(tmp_path):
    """systemd-analyze security scores exposure from 0 (sandboxed) to 10; a unit with only
    User= set, as VDSM's vdsmd.service, scores 9.2 here."""
    with open(os.path.join(REPO, "etc/systemd/hsmd.service")) as f:
        text = f.read()
    unit = tmp_path / "hsmd.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/", f"ExecStart={VENV_BIN}/"))
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                          text=True, timeout=60)
    [score] = [line.split("hsmd.service: ")[1].split()[0] for line in done.stdout.splitlines()
               if "Overall exposure level" in line]
    assert float(score) <= 2.0, done.stdout


def test_shipped_hsm_conf_turns_on_tls_the_unix_socket_and_the_hsm_user():
    shipped = hsmconfig.load(os.path.join(REPO, "etc/hsm/hsm.conf"))
    assert shipped.rpc.ssl is True
    assert shipped.rpc.unix_socket == "/run/hsm/hsmd.sock" and shipped.rpc.unix_socket_group == "hsm"
    assert shipped.rpc.unix_socket_mode == 0o660
    assert shipped.supervdsm.group == "hsm" and shipped.supervdsm.allowed_uids == ["0", "hsm"]
    built_in = hsmconfig.load(None)
    assert built_in.rpc.ssl is False and built_in.rpc.unix_socket == ""  # development and tests: as before


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles is not installed")
def test_tmpfiles_give_hsm_its_folders_and_keep_root_s_apart(tmp_path):
    (tmp_path / "etc").mkdir()
    # tmpfiles resolves users in the root it is given: root, and hsm as 990.
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nhsm:x:990:990::/var/lib/hsm:/usr/sbin/nologin\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nhsm:x:990:\n")
    tmpfiles = os.path.join(REPO, "etc/tmpfiles.d/hsm.conf")
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", tmpfiles], check=True, capture_output=True,
                   timeout=60)

    def seen(path):
        info = os.stat(tmp_path / path)
        return info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)

    assert seen("run/hsm") == (0, 990, "0o1775")  # sticky: hsm adds its socket, cannot replace root's
    assert seen("var/lib/hsm") == (990, 990, "0o750")
    assert seen("var/log/hsm") == (990, 990, "0o750")
    assert seen("var/log/supervdsm") == (0, 0, "0o750")


def test_supervdsmd_unit_restarts_always():
    unit = _unit("supervdsmd.service")
    assert unit["Service"]["ExecStart"] == "/usr/sbin/supervdsmd"
    assert unit["Service"]["Restart"] == "always"


def test_shipped_hsm_conf_is_the_option_table():
    with open(os.path.join(REPO, "etc/hsm/hsm.conf")) as f:
        assert f.read() == hsmconfig.sample(), "regenerate etc/hsm/hsm.conf with hsm-cli config sample"


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed")
    top = tmp_path_factory.mktemp("rpmbuild")
    done = subprocess.run(["rpmbuild", "--nodeps", "-bb", "--define", f"_topdir {top}",
                           "--define", f"_sourcedir {REPO}", os.path.join(REPO, "hsm.spec")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    built = {path.name: str(path) for path in (top / "RPMS" / "noarch").iterdir()}
    assert set(built) == {f"hsm-{hsm.__version__}-1.noarch.rpm", f"vdsm-hsm-shim-{hsm.__version__}-1.noarch.rpm"}
    return built[f"hsm-{hsm.__version__}-1.noarch.rpm"]


def _query(package, *args):
    return subprocess.run(["rpm", "-qp", *args, package], capture_output=True, text=True, check=True).stdout


def test_rpm_is_noarch_and_named_by_version(rpm):
    assert os.path.basename(rpm) == f"hsm-{hsm.__version__}-1.noarch.rpm"


def test_rpm_file_list(rpm):
    files = set(_query(rpm, "-l").splitlines())
    for path in ["/usr/bin/hsmd", "/usr/bin/hsm-cli", "/usr/sbin/supervdsmd",
                 "/usr/lib/systemd/system/hsmd.service", "/usr/lib/systemd/system/supervdsmd.service",
                 "/usr/lib/tmpfiles.d/hsm.conf", "/etc/hsm/hsm.conf", "/etc/hsm/logger.conf",
                 "/var/lib/hsm", "/var/log/hsm", "/var/log/supervdsm", "/usr/lib/sysusers.d/hsm.conf",
                 "/usr/libexec/hsm/hooks/before_hsmd_start",
                 "/usr/libexec/hsm/hooks/after_hsmd_stop"]:
        assert path in files, path
    site = [f for f in files if f.endswith("/site-packages/hsm/daemon.py")]
    assert site, "the hsm package is installed"
    for module in ("hsm/tasks/manager.py", "supervdsm/server.py"):
        assert any(f.endswith(module) for f in files), module
    assert not any("/vdsm_shim/" in f for f in files), "the shim is its own package"
    assert not any("__pycache__" in f for f in files)


def test_rpm_config_files_are_noreplace(rpm):
    lines = _query(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    flags = dict(line.partition(" ")[::2] for line in lines)
    assert flags["/etc/hsm/hsm.conf"] == "cn"
    assert flags["/etc/hsm/logger.conf"] == "cn"


def test_the_shim_is_a_package_of_its_own_needing_hsm(rpm):
    shim = rpm.replace("/hsm-", "/vdsm-hsm-shim-")
    files = set(_query(shim, "-l").splitlines())
    assert {f.split("/site-packages/")[1] for f in files if "/site-packages/" in f} >= {
        "vdsm_shim/__init__.py", "vdsm_shim/proxy.py", "vdsm_shim/inprocess.py"}
    assert all("/vdsm_shim" in f for f in files)
    requires = {line.split()[0] for line in _query(shim, "--requires").splitlines()}
    assert "hsm" in requires


def test_the_shim_imports_only_hsms_client_until_it_runs_hsm_in_process():
    code = ("import json, sys, vdsm_shim\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('hsm.', 'supervdsm')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == ["hsm.config", "hsm.errors", "hsm.rpc", "hsm.rpc.client", "hsm.rpc.marshal",
                                 "hsm.sizes"]


def test_rpm_makes_the_hsm_user_and_gives_it_its_folders(rpm):
    lines = _query(rpm, "--qf", "[%{FILENAMES} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms}\n]").splitlines()
    owners = {line.split()[0]: line.split()[1:] for line in lines}
    assert owners["/var/lib/hsm"] == ["hsm:hsm", "drwxr-x---"]
    assert owners["/var/log/hsm"] == ["hsm:hsm", "drwxr-x---"]
    assert owners["/var/log/supervdsm"] == ["root:root", "drwxr-x---"]
    scripts = _query(rpm, "--scripts")
    assert "useradd -r -g hsm" in scripts and "systemd-tmpfiles --create" in scripts


def test_rpm_requires(rpm):
    requires = {line.split()[0] for line in _query(rpm, "--requires").splitlines()}
    assert {"lvm2", "qemu-img", "sanlock", "python3-sanlock", "python3-prometheus_client"} <= requires


def test_rpm_entry_points_run(rpm, tmp_path):
    """The wrappers in the RPM start the real programs (unpacked, with the venv's Python)."""
    root = tmp_path / "root"
    root.mkdir()
    rpm2cpio = subprocess.run(["rpm2cpio", rpm], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=rpm2cpio, cwd=root, check=True)
    [site] = [str(p) for p in root.glob("usr/lib/python3*/site-packages")]
    for wrapper, words in [("usr/bin/hsmd", "hsmd"), ("usr/bin/hsm-cli", "hsm-cli"),
                           ("usr/sbin/supervdsmd", "supervdsmd")]:
        done = subprocess.run([sys.executable, str(root / wrapper), "--help"], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=site), timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert words in done.stdout
