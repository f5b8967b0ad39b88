"""A real hsmd process for tests: started on a free port, stopped with SIGTERM."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import xmlrpc.client

from hsm.rpc.client import ServiceProxy, TlsFiles
from tests.waiting import wait_for

VENV_BIN = os.path.dirname(sys.executable)
HSMD = os.path.join(VENV_BIN, "hsmd")
HSM_CLI = os.path.join(VENV_BIN, "hsm-cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: str, sections: dict[str, dict[str, object]]) -> str:
    with open(path, "w") as f:
        for section, options in sections.items():
            f.write(f"[{section}]\n")
            for name, value in options.items():
                f.write(f"{name} = {value}\n")
    return path


# The sanlock daemon the test session starts (tests/conftest.py): every hsmd and the test process use it.
SANLOCK_RUN_DIR = os.environ.get("HSM_TEST_SANLOCK_RUN_DIR", "/run/sanlock")


class Hsmd:
    """One hsmd process with its own state, log and hooks folders under `root`."""

    def __init__(self, root: str, config: dict[str, dict[str, object]] | None = None,
                 env: dict[str, str] | None = None, tls: TlsFiles | None = None, user: str | None = None) -> None:
        """`user`: run hsmd as this user (the test runs as root); `root` is handed to it."""
        self.root = root
        self.user = user
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state_dir = os.path.join(root, "state")
        self.log_dir = os.path.join(root, "log")
        self.hooks_dir = os.path.join(root, "hooks")
        self.tls = tls
        sections = {"logging": {"log_dir": self.log_dir}, "irs": {"hooks_dir": self.hooks_dir},
                    "sanlock": {"run_dir": SANLOCK_RUN_DIR, "io_timeout": 1}}
        for section, options in (config or {}).items():
            sections.setdefault(section, {}).update(options)
        self.config_path = write_config(os.path.join(root, "hsm.conf"), sections)
        self.env = dict(os.environ, **(env or {}))
        self.process: subprocess.Popen | None = None
        self._proxies: list[ServiceProxy] = []
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(root, account.pw_uid, account.pw_gid)

    @property
    def log_path(self) -> str:
        return os.path.join(self.log_dir, "hsm.log")

    def command(self) -> list[str]:
        return [HSMD, "--listen", self.address, "--state-dir", self.state_dir, "--config", self.config_path]

    def start(self, timeout: float = 15.0) -> Hsmd:
        self.output_path = os.path.join(self.root, "hsmd.out")
        with open(self.output_path, "ab") as output:
            as_user = {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}
            self.process = subprocess.Popen(self.command(), env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, **as_user)
        def answered() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"hsmd exited {self.process.returncode}: {self.output()}")
            try:
                return self.proxy(timeout=1).ping()["status"]["code"] == 0
            except (OSError, xmlrpc.client.ProtocolError):
                return False

        try:
            wait_for(answered, timeout, what="answer to ping from hsmd", poll=0.05)
        except AssertionError:
            self.kill()
            raise RuntimeError("hsmd did not answer ping in time") from None
        return self

    def proxy(self, timeout: float = 30.0) -> ServiceProxy:
        """A client; closed when this hsmd is stopped or killed."""
        proxy = ServiceProxy(self.address, tls=self.tls, timeout=timeout)
        self._proxies.append(proxy)
        return proxy

    def close_proxies(self) -> None:
        while self._proxies:
            self._proxies.pop().close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        self.close_proxies()
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        finally:
            self.kill()
        return self.process.returncode

    def kill(self) -> None:
        self.close_proxies()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def rss_mb(self) -> float:
        """hsmd's resident memory in MB (its I/O helpers not counted)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        """What hsmd wrote on stdout and stderr."""
        with open(self.output_path) as f:
            return f.read()

    def log_text(self) -> str:
        with open(self.log_path) as f:
            return f.read()
