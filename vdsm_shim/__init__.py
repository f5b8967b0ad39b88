"""What VDSM imports to reach hsm: hsmd over its socket, or hsm's own code in VDSM's process.

    from vdsm_shim import APIBase, ServiceProxy

    class Global(APIBase):          # VDSM's API classes: self._irs is the choice, made once
        ...

    cli = ServiceProxy()            # falsy when hsmd cannot be reached
    irs = cli if cli else InProcess(irs_config)

The shim imports hsm's client (hsm.rpc.client) and, for the in-process
fallback only, hsm.api.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vdsm_shim.proxy import ServiceProxy

log = logging.getLogger("vdsm_shim")

__all__ = ["APIBase", "ServiceProxy", "choose"]

USES = ("auto", "hsmd", "in-process")


def choose(irs: dict[str, object] | None = None, use: str | None = None, address: str | None = None,
           tls=None, task_id: Callable[[], str | None] | None = None) -> object:
    """hsmd's ServiceProxy when it answers (or when `use` is "hsmd"), else hsm in-process.

    `use` comes from VDSM's [irs] hsm option when not given: auto (the default),
    hsmd, or in-process. `task_id` answers VDSM's current task id (VDSM passes
    `lambda: vars.task.id`): the verbs that start a task then run under it.
    """
    use = use or str((irs or {}).get("hsm", "auto"))
    if use not in USES:
        raise ValueError(f"[irs] hsm = {use!r}: expected one of {', '.join(USES)}")
    if use != "in-process":
        proxy = ServiceProxy(address, tls=tls, task_id=task_id)
        if proxy or use == "hsmd":
            log.info("VDSM's storage: hsmd at %s%s", proxy.address, "" if proxy else " (not answering yet)")
            return proxy
        log.info("VDSM's storage: hsm in this process (hsmd does not answer at %s)", proxy.address)
    else:
        log.info("VDSM's storage: hsm in this process ([irs] hsm = in-process)")
    from vdsm_shim.inprocess import InProcess  # hsm.api, only when it runs here
    return InProcess({name: value for name, value in (irs or {}).items() if name != "hsm"}, task_id=task_id)


class APIBase:
    """A base for VDSM's API classes: `self._irs` answers VDSM's storage verbs, through hsmd or in-process.

    The choice is made once per process, by the first instance, from VDSM's [irs]
    values, and logged.
    """

    _irs: object = None
    _choosing = threading.Lock()

    def __init__(self, irs: dict[str, object] | None = None, use: str | None = None, address: str | None = None,
                 tls=None, task_id: Callable[[], str | None] | None = None) -> None:
        with APIBase._choosing:
            if APIBase._irs is None:
                APIBase._irs = choose(irs, use, address, tls, task_id)
        self._irs = APIBase._irs

    @classmethod
    def forget_choice(cls) -> None:
        """Choose again at the next instance (tests; VDSM restarting its storage)."""
        with cls._choosing:
            close = getattr(APIBase._irs, "close", None)
            APIBase._irs = None
        if close is not None:
            close()
