"""The XML-RPC API on a Unix socket: who may call is decided by SO_PEERCRED, before a request is read."""

from __future__ import annotations

import grp
import os
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

from hsm.rpc.client import ServiceProxy
from tests.hsmd import HSM_CLI
from tests.waiting import wait_for

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"

# A stdlib-only client, run as another user by a python that user can execute: one ping, then
# prints the HTTP status line, or "closed" if hsmd closed the connection without an answer.
_CLIENT = r"""
import socket, sys
body = (b"<?xml version='1.0'?><methodCall><methodName>getImageList</methodName>"
        b"<params><param><value><string>local</string></value></param></params></methodCall>")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
if sys.argv[2:] != ["silent"]:  # silent: send nothing, only read what hsmd says
    s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
    if b"</methodResponse>" in data:
        break
print(data.split(b"\r\n", 1)[0].decode() if data else "closed")
print("getImageList answered" if b"</methodResponse>" in data else "no answer")
"""


@pytest.fixture
def open_dir():
    """A folder every user may traverse (pytest's tmp folders are root's alone); short, for AF_UNIX paths."""
    path = tempfile.mkdtemp(prefix="hsmsock-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def unix_hsmd(make_hsmd, tmp_path):
    """start(name, **rpc options) -> (hsmd, socket path): each hsmd's socket under its own root by default."""

    def start(name: str = "hsmd", **rpc) -> tuple:
        path = rpc.pop("unix_socket", str(tmp_path / name / "hsmd.sock"))
        daemon = make_hsmd(name, config={"rpc": {"unix_socket": path, **rpc}})
        daemon.start()
        return daemon, path

    return start


def _as_nobody(path: str, *args: str) -> list[str]:
    done = subprocess.run([SYSTEM_PYTHON, "-I", "-c", _CLIENT, path, *args], user=NOBODY, group=NOBODY,
                          extra_groups=[], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _image_calls(daemon) -> int:
    return daemon.proxy().getStats()["stats"]["verbs"].get("getImageList", {}).get("calls", 0)


def test_ping_and_image_verb(unix_hsmd):
    daemon, path = unix_hsmd()
    with ServiceProxy(f"unix:{path}", timeout=10) as proxy:
        assert proxy.ping()["status"]["code"] == 0
        created = proxy.createVirtualDisk("local", "1048576")
        assert created["status"]["code"] == 0, created
        listed = proxy.getImageList("local")
        assert listed["status"]["code"] == 0, listed
        assert proxy.ping()["status"]["code"] == 0  # the same keep-alive connection again
    assert daemon.stop() == 0
    assert not os.path.exists(path), "hsmd left its socket behind"


def test_mode_and_group(unix_hsmd):
    group = grp.getgrgid(NOBODY).gr_name
    daemon, path = unix_hsmd(unix_socket_group=group, unix_socket_mode="0640")
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == NOBODY
    daemon.stop()


def test_stale_socket_replaced(unix_hsmd, open_dir):
    path = os.path.join(open_dir, "hsmd.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)  # bound, never listening: what a killed hsmd leaves
    unix_hsmd(unix_socket=path)
    with ServiceProxy(f"unix:{path}", timeout=10) as proxy:
        assert proxy.ping()["status"]["code"] == 0
    # A second hsmd on a live socket refuses to start rather than steal it.
    with pytest.raises(RuntimeError, match="another process serves"):
        unix_hsmd("second", unix_socket=path)
    with ServiceProxy(f"unix:{path}", timeout=10) as proxy:
        assert proxy.ping()["status"]["code"] == 0


def test_other_uid_refused_then_allowed(unix_hsmd, open_dir):
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("needs root and a system python another user can run")
    path = os.path.join(open_dir, "hsmd.sock")
    daemon, _ = unix_hsmd(unix_socket=path, unix_socket_mode="0666")
    assert _as_nobody(path) == ["HTTP/1.1 403 Forbidden", "no answer"]
    assert _as_nobody(path, "silent") == ["HTTP/1.1 403 Forbidden", "no answer"]  # refused before any request
    wait_for(lambda: "uid 65534" in daemon.log_text(), what="the refusal in the log")
    assert _image_calls(daemon) == 0, "a refused caller's verb ran"
    daemon.stop()

    allowed, _ = unix_hsmd("allowed", unix_socket=path, unix_socket_mode="0666",
                            allowed_uids="0, 65534")
    assert _as_nobody(path) == ["HTTP/1.1 200 OK", "getImageList answered"]
    allowed.stop()

    member, _ = unix_hsmd("member", unix_socket=path, unix_socket_mode="0660",
                           unix_socket_group=grp.getgrgid(NOBODY).gr_name)
    assert _as_nobody(path) == ["HTTP/1.1 200 OK", "getImageList answered"]
    member.stop()


def test_cli_address(unix_hsmd):
    daemon, path = unix_hsmd()
    done = subprocess.run([HSM_CLI, "--address", f"unix:{path}", "ping"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, HSM_ADDRESS=""))
    assert done.returncode == 0, done.stderr
    missing = subprocess.run([HSM_CLI, "--address", f"unix:{path}.none", "ping"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2
    assert "cannot reach hsmd" in missing.stderr


def test_side_by_side(unix_hsmd):
    one, one_path = unix_hsmd("one")
    two, two_path = unix_hsmd("two")
    assert one_path != two_path
    with ServiceProxy(f"unix:{one_path}", timeout=10) as a, ServiceProxy(f"unix:{two_path}", timeout=10) as b:
        assert a.ping()["status"]["code"] == 0
        assert b.ping()["status"]["code"] == 0
        assert a.getHsmConfig("irs")["config"]["irs"]["state_dir"] == one.state_dir
        assert b.getHsmConfig("irs")["config"]["irs"]["state_dir"] == two.state_dir
    one.stop()
    with ServiceProxy(f"unix:{two_path}", timeout=10) as b:
        assert b.ping()["status"]["code"] == 0
    assert not os.path.exists(one_path) and os.path.exists(two_path)


def test_cli_default_is_the_configured_socket(unix_hsmd, tmp_path, monkeypatch, capsys):
    from hsm import cli
    from hsm import config as hsmconfig
    from hsm.rpc.client import DEFAULT_ADDRESS
    from tests.hsmd import write_config

    daemon, path = unix_hsmd()
    conf = write_config(str(tmp_path / "cli.conf"), {"rpc": {"unix_socket": path}})
    monkeypatch.setattr(hsmconfig, "DEFAULT_PATH", conf)
    monkeypatch.delenv("HSM_ADDRESS", raising=False)
    assert cli.default_address() == f"unix:{path}"
    assert cli.main(["ping"]) == 0
    assert '"code": 0' in capsys.readouterr().out
    daemon.stop()  # the socket is gone: back to TCP
    assert cli.default_address() == DEFAULT_ADDRESS
