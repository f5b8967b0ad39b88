"""hsm.log from the logging config file, with task ids on task lines."""

from __future__ import annotations

import logging
import logging.config
import logging.handlers
import os
import sys

from hsm.config import Config
from hsm.logctx import LINE_FORMAT, TaskFilter


def setup(config: Config, log_file: str = "hsm.log", log_dir: str | None = None) -> str:
    """Configure logging into `log_dir` ([logging] log_dir unless given); returns where the log goes."""
    log_dir = log_dir or config.logging.log_dir
    os.makedirs(log_dir, exist_ok=True)
    if os.path.exists(config.logging.config_file):
        logging.config.fileConfig(config.logging.config_file, defaults={"log_dir": log_dir, "log_file": log_file},
                                  disable_existing_loggers=False)
    else:
        # No config file (running from a checkout): the same layout, built here.
        logfile = logging.handlers.WatchedFileHandler(os.path.join(log_dir, log_file))
        logfile.setFormatter(logging.Formatter(LINE_FORMAT))
        errors = logging.StreamHandler(sys.stderr)
        errors.setLevel(logging.WARNING)
        errors.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(task)s%(message)s"))
        logging.basicConfig(handlers=[logfile, errors], force=True)
    root = logging.getLogger()
    root.setLevel(config.logging.level)
    for handler in root.handlers:
        handler.addFilter(TaskFilter())
    return os.path.join(log_dir, log_file)
