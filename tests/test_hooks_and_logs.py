"""Lifecycle hooks and hsm.log, with a real hsmd."""

import os
import re
import stat
import subprocess
import sys

# VDSM's line layout: thread::LEVEL::date time,ms::module::line::logger::(function) message
LINE = re.compile(r"^[\w ()-]+::(DEBUG|INFO|WARNING|ERROR|CRITICAL)::\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}::"
                  r"\w+::\d+::[\w.]+::\(\w+\) ")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hook(folder, name, body):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def test_hooks_run_in_order_around_the_service(make_hsmd, tmp_path):
    daemon = make_hsmd()
    trace = tmp_path / "trace"
    before = os.path.join(daemon.hooks_dir, "before_hsmd_start")
    after = os.path.join(daemon.hooks_dir, "after_hsmd_stop")
    _hook(before, "20_second", f"echo before2 $HSM_HOOK_EVENT >> {trace}")
    _hook(before, "10_first", f"echo before1 >> {trace}")
    _hook(before, "15_fails", f"echo failing >> {trace}; echo oops >&2; exit 1")
    _hook(after, "10_after", f"echo after >> {trace}")
    with open(os.path.join(before, "99_not_executable"), "w") as f:
        f.write(f"#!/bin/sh\necho never >> {trace}\n")
    daemon.start()
    assert trace.read_text() == "before1\nfailing\nbefore2 before_hsmd_start\n"
    assert daemon.stop() == 0
    assert trace.read_text().endswith("after\n")
    log = daemon.log_text()
    assert "15_fails failed (exit 1): oops" in log


def test_fatal_hook_stops_start(make_hsmd):
    daemon = make_hsmd()
    _hook(os.path.join(daemon.hooks_dir, "before_hsmd_start"), "10_veto", "echo no storage today; exit 2")
    done = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "no storage today" in done.stderr


def test_hung_hook_is_killed(make_hsmd, tmp_path):
    daemon = make_hsmd(config={"irs": {"hook_timeout": "1"}})
    _hook(os.path.join(daemon.hooks_dir, "before_hsmd_start"), "10_hang", "exec sleep 60")
    daemon.start(timeout=20)
    assert "10_hang killed after 1.0 s" in daemon.log_text()


def test_log_lines_have_vdsm_layout(hsmd):
    hsmd.proxy().getHsmConfig("nosuch")
    lines = hsmd.log_text().splitlines()
    assert lines
    for line in lines:
        if "Traceback" in line or line.startswith(" "):
            continue
        assert LINE.match(line), line
    assert any("getHsmConfig failed: Invalid parameter: no section [nosuch] (code 1000)" in line
               for line in lines)


TASK_LOGGING = """
import logging, sys
from hsm import config, logsetup
from hsm.logctx import task_context
path = logsetup.setup(config.load(None, {("logging", "log_dir"): sys.argv[1],
                                         ("logging", "config_file"): sys.argv[2]}))
log = logging.getLogger("hsm.copy")
def copy_step():
    with task_context("3f2a-task"):
        log.info("copying")
    log.info("outside")
copy_step()
"""


def test_task_id_on_lines_written_in_a_task(tmp_path):
    """The shipped logger.conf puts Task=`id`:: on lines logged inside a task."""
    script = tmp_path / "task_step.py"
    script.write_text(TASK_LOGGING)
    subprocess.run([sys.executable, str(script), str(tmp_path), os.path.join(REPO, "etc/hsm/logger.conf")],
                   check=True, timeout=30, cwd=REPO)
    lines = (tmp_path / "hsm.log").read_text().splitlines()
    assert LINE.match(lines[0])
    assert lines[0].endswith("::hsm.copy::(copy_step) Task=`3f2a-task`::copying")
    assert lines[1].endswith("::hsm.copy::(copy_step) outside")
