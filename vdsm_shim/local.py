"""The calls VDSM's VM code makes on `_irs` that are not wire verbs: the ones that take a Python callable.

ServiceProxy and InProcess both inherit them, so VDSM sees one behaviour
whichever way hsm runs.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from hsm.errors import InvalidParameterException

log = logging.getLogger("vdsm_shim")

MiB = 1 << 20
VOLUME_KEYS = ("domainID", "imageID", "volumeID")


class LocalCalls:
    """Mixed into a client whose `call(verb, *args)` answers hsm's status dicts."""

    call: Callable[..., dict]

    def sendExtendMsg(self, spUUID: str, volDict: dict, newSize: int,
                      callbackFunc: Callable[[dict], Any]) -> dict:
        """Extend a volume to `newSize` bytes, as VDSM's VM code asks when a thin disk fills up, and call
        `callbackFunc(volDict)` in this process once the extend has ended well (VDSM's mailbox called
        back only then: on failure the VM stays paused and VDSM asks again). Answers at once; the
        extend runs in a thread of its own."""
        if not isinstance(volDict, dict) or any(not isinstance(volDict.get(key), str) for key in VOLUME_KEYS):
            return {"status": InvalidParameterException(f"volDict needs {', '.join(VOLUME_KEYS)}").status()}
        if isinstance(newSize, bool) or not isinstance(newSize, int) or newSize <= 0:
            return {"status": InvalidParameterException(f"newSize={newSize!r}: bytes, more than 0").status()}
        if not callable(callbackFunc):
            return {"status": InvalidParameterException("callbackFunc: not callable").status()}
        args = (volDict["domainID"], spUUID, volDict["imageID"], volDict["volumeID"], math.ceil(newSize / MiB))
        threading.Thread(target=self._extend, args=(args, volDict, callbackFunc), daemon=True,
                         name=f"extend-{volDict['volumeID']}").start()
        return {"status": {"code": 0, "message": "OK"}}

    def _extend(self, args: tuple, vol_dict: dict, callback: Callable[[dict], Any]) -> None:
        try:
            answer = self.call("extendVolume", *args)
        except Exception:
            log.exception("extendVolume of %s failed", vol_dict["volumeID"])
            return
        if answer["status"]["code"] != 0:
            log.error("extendVolume of %s failed: %s", vol_dict["volumeID"], answer["status"])
            return
        try:
            callback(vol_dict)
        except Exception:
            log.exception("The callback after extending %s failed", vol_dict["volumeID"])
