"""A real supervdsmd process for tests, on its own socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

from supervdsm.client import SupervdsmClient
from tests.hsmd import VENV_BIN, write_config
from tests.waiting import wait_for

SUPERVDSMD = os.path.join(VENV_BIN, "supervdsmd")


class Supervdsmd:
    def __init__(self, root: str, config: dict[str, dict[str, object]] | None = None,
                 env: dict[str, str] | None = None, **supervdsm_options: object) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.socket = os.path.join(root, "run", "supervdsm.sock")
        self.log_dir = os.path.join(root, "log")
        options = {"socket": self.socket, "log_dir": self.log_dir, **supervdsm_options}
        sections = {"supervdsm": options, **(config or {})}
        self.config_path = write_config(os.path.join(root, "supervdsm.conf"), sections)
        self.env = dict(os.environ, **(env or {}))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> Supervdsmd:
        output = open(os.path.join(self.root, "supervdsmd.out"), "ab")
        with output:
            self.process = subprocess.Popen([SUPERVDSMD, "--config", self.config_path], stdout=output,
                                            stderr=subprocess.STDOUT, env=self.env)
        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"supervdsmd exited {self.process.returncode}")
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(self.socket)
                except OSError:
                    return False
            return True

        try:
            wait_for(listening, timeout, what="supervdsmd listening")
        except AssertionError:
            raise RuntimeError("supervdsmd did not start") from None
        return self

    def client(self) -> SupervdsmClient:
        return SupervdsmClient(self.socket)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
