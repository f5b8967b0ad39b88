"""Lifecycle hooks: executables in <hooks_dir>/<event>/ run in name order.

As VDSM's hook scripts: exit 0 is success, 1 a failure that is logged while
the chain goes on, 2 a failure that stops the chain and the action (hsmd does
not start when a before_hsmd_start hook exits 2). A hook that outlives
`[irs] hook_timeout` is killed and counts as exit 1.
"""

from __future__ import annotations

import logging
import os
import subprocess

from hsm.errors import HookError

log = logging.getLogger("hsm.hooks")

BEFORE_START = "before_hsmd_start"
AFTER_STOP = "after_hsmd_stop"
FATAL = 2


def hook_paths(hooks_dir: str, event: str) -> list[str]:
    folder = os.path.join(hooks_dir, event)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    paths = [os.path.join(folder, name) for name in names if not name.startswith(".")]
    return [p for p in paths if os.path.isfile(p) and os.access(p, os.X_OK)]


def run_hooks(hooks_dir: str, event: str, timeout: float) -> None:
    """Run every hook of `event`; raises HookError when one exits 2."""
    env = dict(os.environ, HSM_HOOK_EVENT=event)
    for path in hook_paths(hooks_dir, event):
        try:
            done = subprocess.run([path], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.error("Hook %s killed after %s s", path, timeout)
            continue
        except OSError as e:
            log.error("Hook %s could not run: %s", path, e)
            continue
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode == 0:
            log.info("Hook %s succeeded%s", path, f": {output}" if output else "")
        elif done.returncode == FATAL:
            log.error("Hook %s failed fatally (exit 2): %s", path, output)
            raise HookError(f"{path} exited 2: {output}")
        else:
            log.warning("Hook %s failed (exit %d): %s", path, done.returncode, output)
