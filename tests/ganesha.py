"""A real nfs-ganesha server on 127.0.0.1 (NFSv4 only, so no rpcbind), exporting one folder as /export."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.waiting import wait_for

CONFIG = """
NFS_CORE_PARAM {{ Protocols = 4; Enable_NLM = false; Enable_RQUOTA = false; Bind_Addr = 127.0.0.1;
                 NFS_Port = 2049; }}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {root}/recovery; }}
EXPORT {{ Export_Id = 1; Path = {export}; Pseudo = /export; Protocols = 4; Transports = TCP;
         Access_Type = RW; Squash = No_Root_Squash; FSAL {{ Name = VFS; }} }}
"""


class Ganesha:
    def __init__(self, root: str, export: str) -> None:
        self.root, self.export = root, export
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> Ganesha:
        os.makedirs(os.path.join(self.root, "recovery"), exist_ok=True)
        config = os.path.join(self.root, "ganesha.conf")
        with open(config, "w") as f:
            f.write(CONFIG.format(root=self.root, export=self.export))
        self.process = subprocess.Popen(
            ["ganesha.nfsd", "-F", "-L", os.path.join(self.root, "ganesha.log"), "-f", config,
             "-p", os.path.join(self.root, "ganesha.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def listening() -> bool:
            assert self.process.poll() is None, f"ganesha exited {self.process.returncode}"
            try:
                socket.create_connection(("127.0.0.1", 2049), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_for(listening, timeout, what="ganesha listening", poll=0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
