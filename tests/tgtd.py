"""A real tgtd iSCSI target on 127.0.0.1 for tests: a file-backed LUN, optionally behind CHAP."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.hsmd import free_port
from tests.waiting import wait_for


class Tgtd:
    def __init__(self, root: str, iqn: str, user: str = "", password: str = "") -> None:
        self.root, self.iqn, self.user, self.password = root, iqn, user, password
        self.port = free_port()
        self.control = str(20000 + self.port % 10000)  # its own management channel: tests do not share one
        self.process: subprocess.Popen | None = None

    def tgtadm(self, *args: str) -> None:
        subprocess.run(["tgtadm", "-C", self.control, "--lld", "iscsi", *args], check=True, capture_output=True)

    def start(self, lun_bytes: int = 64 << 20) -> Tgtd:
        lun = os.path.join(self.root, "lun1.img")
        with open(lun, "wb") as f:
            f.truncate(lun_bytes)
        self.process = subprocess.Popen(["tgtd", "-f", "-C", self.control, "--iscsi", f"portal=127.0.0.1:{self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def target_made() -> bool:
            assert self.process.poll() is None, f"tgtd exited {self.process.returncode}"
            try:
                self.tgtadm("--op", "new", "--mode", "target", "--tid", "1", "-T", self.iqn)
            except subprocess.CalledProcessError:
                return False
            return True

        wait_for(target_made, what="tgtd taking a target", poll=0.1)
        self.tgtadm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lun)
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if self.user:
            self.tgtadm("--op", "new", "--mode", "account", "--user", self.user, "--password", self.password)
            self.tgtadm("--op", "bind", "--mode", "account", "--tid", "1", "--user", self.user)
        return self

    def url(self, with_credentials: bool = True) -> str:
        auth = f"{self.user}%{self.password}@" if self.user and with_credentials else ""
        return f"iscsi://{auth}127.0.0.1:{self.port}/{self.iqn}/1"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # tgtd ignores SIGTERM
            self.process.wait()
