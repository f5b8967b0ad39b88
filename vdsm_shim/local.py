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

# The legacy verbs that start a task, with their arguments before `options` as VDSM's callers may leave
# them out: the defaults hsmd takes for the missing ones (tests/test_vdsm_shim.py holds them to hsmd's
# own signatures). With them the shim can put VDSM's task id in options without changing the call.
TASK_VERBS: dict[str, tuple[int, tuple]] = {
    # verb: (arguments always given, defaults of the optional ones that follow)
    "createVolume": (9, ("", "")),
    "deleteVolume": (4, (False, False)),
    "deleteImage": (3, (False, False)),
    "copyImage": (7, ("", "", 6, 3, 0, False, False)),
    "moveImage": (6, (False, False)),
    "moveMultipleImages": (5, (False,)),
    "cloneImageStructure": (4, ()),
    "syncImageData": (5, ()),
    "mergeSnapshots": (6, (False,)),
    "spmStart": (5, ("", "")),
}


def with_task_id(verb: str, args: tuple, task_id: Callable[[], str | None] | None) -> tuple:
    """`args` with VDSM's current task id as options.taskId, for a legacy verb that starts a task and was
    called without options (VDSM's callers never pass them): hsmd's task then has VDSM's id."""
    if task_id is None or verb not in TASK_VERBS:
        return args
    given, defaults = TASK_VERBS[verb]
    if verb == "copyImage" and len(args) < given:
        return args  # the new API's copyImage
    if not given <= len(args) < given + len(defaults) + 1:
        return args  # options given already, or a call hsmd refuses anyway
    current = task_id()
    if not current:
        return args
    return (*args, *defaults[len(args) - given:], {"taskId": current})


class LocalCalls:
    """Mixed into a client whose `call(verb, *args)` answers hsm's status dicts."""

    call: Callable[..., dict]
    task_id: Callable[[], str | None] | None = None  # VDSM's current task id (its thread-local task's)

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
