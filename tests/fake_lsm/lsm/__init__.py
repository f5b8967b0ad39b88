"""A FAKE `lsm`, for hsm's tests only: it stands in for libstoragemgmt's Python binding talking to
its `sim://` plugin, which is not installable on these machines (not in Debian 12, not on PyPI,
whose `lsm` is an unrelated SQLite binding).

It follows lsm's documented client API: lsm.Client(uri, plain_text_password, timeout_ms), systems(),
pools(), volumes(), fs(), capabilities(system) -> Capabilities (supported(), lsm's constant numbers),
volume_create/volume_resize -> (job_id, None) or (None, volume), volume_delete -> job_id or None,
fs_file_clone(fs, src_file_name, dest_file_name) -> job_id or None, job_status(job_id) ->
(status, percent, result), job_free; LsmError with ErrorNumber, JobStatus, and System, Pool, Volume
and FileSystem with lsm's attribute names. Behind it is a simulated array that acts as the sim
plugin does (lsm/_sim.py): state in a file shared by every connection and process, job progress
from elapsed time ($LSM_SIM_TIME, default 1 s), NAME_CONFLICT on a taken name, sizes in 512-byte
blocks, the plugin's pools. Differences, all marked: with $LSM_SIM_TIME=0 a call answers its result
at once instead of a job (as plugins without jobs do); `lsm._sim.set_capabilities_off` lets a test
take capabilities away; a file system exists only through `lsm._sim.add_filesystem`, which gives it
a local folder as its contents; fs_file_clone really copies the file in that folder and refuses
what an array would, where the sim plugin only checks that the file system exists. Only `sim://`
URIs connect. lsmd, the plugin processes and the wire protocol are not modelled.
"""

from lsm._client import Client
from lsm._data import Capabilities, ErrorNumber, FileSystem, JobStatus, LsmError, Pool, System, Volume

__all__ = ["Capabilities", "Client", "ErrorNumber", "FileSystem", "JobStatus", "LsmError", "Pool", "System",
           "Volume"]
