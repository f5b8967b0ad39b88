"""lsm's numbers, error and data classes, with the names and values libstoragemgmt's Python binding
documents (lsm/_common.py, lsm/_data.py); written for hsm's tests, not taken from it."""

from __future__ import annotations


class ErrorNumber:
    OK = 0
    LIB_BUG = 1
    PLUGIN_BUG = 2
    JOB_STARTED = 7
    TIMEOUT = 11
    DAEMON_NOT_RUNNING = 12
    PERMISSION_DENIED = 13
    NAME_CONFLICT = 50
    EXISTS_INITIATOR = 52
    INVALID_ARGUMENT = 101
    NO_STATE_CHANGE = 125
    NETWORK_CONNREFUSED = 140
    NETWORK_HOSTDOWN = 141
    NETWORK_ERROR = 142
    NO_MEMORY = 152
    NO_SUPPORT = 153
    IS_MASKED = 160
    HAS_CHILD_DEPENDENCY = 161
    NOT_FOUND_ACCESS_GROUP = 200
    NOT_FOUND_FS = 201
    NOT_FOUND_JOB = 202
    NOT_FOUND_POOL = 203
    NOT_FOUND_FS_SS = 204
    NOT_FOUND_VOLUME = 205
    NOT_FOUND_NFS_EXPORT = 206
    NOT_FOUND_GENERIC = 207
    NOT_FOUND_SYSTEM = 208
    NOT_FOUND_DISK = 209
    NOT_LICENSED = 226
    NO_SUPPORT_ONLINE_CHANGE = 250
    NO_SUPPORT_OFFLINE_CHANGE = 251
    PLUGIN_AUTH_FAILED = 300
    PLUGIN_IPC_FAIL = 301
    PLUGIN_SOCKET_PERMISSION = 307
    PLUGIN_NOT_EXIST = 311
    NOT_ENOUGH_SPACE = 350
    TRANSPORT_COMMUNICATION = 400
    TRANSPORT_SERIALIZATION = 401
    TRANSPORT_INVALID_ARG = 402
    LAST_INIT_IN_ACCESS_GROUP = 502
    UNSUPPORTED_SEARCH_KEY = 510
    EMPTY_ACCESS_GROUP = 511
    POOL_NOT_READY = 512
    DISK_NOT_FREE = 513

    @staticmethod
    def error_number_to_str(error_no: int) -> str:
        for name, value in vars(ErrorNumber).items():
            if not name.startswith("_") and value == error_no:
                return f"{name}({error_no})"
        return f"UNKNOWN_ERROR_NUMBER({error_no})"


class JobStatus:
    INPROGRESS = 1
    COMPLETE = 2
    ERROR = 3


class LsmError(Exception):
    """An error lsm answers: `code` (an ErrorNumber), `msg`, and optional `data`."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(code, message)
        self.code, self.msg, self.data = code, message, data

    def __str__(self) -> str:
        extra = f" Data: {self.data}" if self.data else ""
        return f"{ErrorNumber.error_number_to_str(self.code)}: {self.msg}{extra} "


class _Record:
    """lsm's data objects keep `_name` attributes, read through properties named `name`."""

    _FIELDS: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> object:
        if name in self._FIELDS:
            return self.__dict__["_" + name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._FIELDS)})"


class System(_Record):
    _FIELDS = ("id", "name", "status", "status_info", "plugin_data", "fw_version", "mode", "read_cache_pct")
    STATUS_UNKNOWN = 1 << 0
    STATUS_OK = 1 << 1
    STATUS_ERROR = 1 << 2
    STATUS_DEGRADED = 1 << 3
    STATUS_PREDICTIVE_FAILURE = 1 << 4
    STATUS_OTHER = 1 << 5
    MODE_NO_SUPPORT = -2
    MODE_HARDWARE_RAID = 0
    READ_CACHE_PCT_NO_SUPPORT = -2

    def __init__(self, _id, _name, _status, _status_info, _plugin_data=None, _fw_version="", _mode=None,
                 _read_cache_pct=None) -> None:
        self._id, self._name, self._status, self._status_info = _id, _name, _status, _status_info
        self._plugin_data, self._fw_version = _plugin_data, _fw_version
        self._mode = System.MODE_NO_SUPPORT if _mode is None else _mode
        self._read_cache_pct = System.READ_CACHE_PCT_NO_SUPPORT if _read_cache_pct is None else _read_cache_pct


class Pool(_Record):
    _FIELDS = ("id", "name", "element_type", "unsupported_actions", "total_space", "free_space", "status",
               "status_info", "system_id", "plugin_data")
    TOTAL_SPACE_NOT_FOUND = -1
    FREE_SPACE_NOT_FOUND = -1
    ELEMENT_TYPE_POOL = 1 << 1
    ELEMENT_TYPE_VOLUME = 1 << 2
    ELEMENT_TYPE_FS = 1 << 3
    ELEMENT_TYPE_DELTA = 1 << 4
    ELEMENT_TYPE_VOLUME_FULL = 1 << 5
    ELEMENT_TYPE_VOLUME_THIN = 1 << 6
    ELEMENT_TYPE_SYS_RESERVED = 1 << 10
    UNSUPPORTED_VOLUME_GROW = 1 << 0
    UNSUPPORTED_VOLUME_SHRINK = 1 << 1
    STATUS_UNKNOWN = 1 << 0
    STATUS_OK = 1 << 1
    STATUS_OTHER = 1 << 2
    STATUS_DEGRADED = 1 << 4
    STATUS_ERROR = 1 << 5
    STATUS_STOPPED = 1 << 9

    def __init__(self, _id, _name, _element_type, _unsupported_actions, _total_space, _free_space, _status,
                 _status_info, _system_id, _plugin_data=None) -> None:
        self._id, self._name, self._element_type = _id, _name, _element_type
        self._unsupported_actions, self._total_space, self._free_space = _unsupported_actions, _total_space, _free_space
        self._status, self._status_info, self._system_id, self._plugin_data = (_status, _status_info, _system_id,
                                                                              _plugin_data)


class Volume(_Record):
    _FIELDS = ("id", "name", "vpd83", "block_size", "num_of_blocks", "admin_state", "system_id", "pool_id",
               "plugin_data")
    REPLICATE_UNKNOWN = -1
    REPLICATE_CLONE = 2
    REPLICATE_COPY = 3
    REPLICATE_MIRROR_SYNC = 4
    REPLICATE_MIRROR_ASYNC = 5
    PROVISION_UNKNOWN = -1
    PROVISION_THIN = 1
    PROVISION_FULL = 2
    PROVISION_DEFAULT = 3
    ADMIN_STATE_DISABLED = 0
    ADMIN_STATE_ENABLED = 1

    def __init__(self, _id, _name, _vpd83, _block_size, _num_of_blocks, _admin_state, _system_id, _pool_id,
                 _plugin_data=None) -> None:
        self._id, self._name, self._vpd83, self._block_size = _id, _name, _vpd83, _block_size
        self._num_of_blocks, self._admin_state, self._system_id = _num_of_blocks, _admin_state, _system_id
        self._pool_id, self._plugin_data = _pool_id, _plugin_data

    @property
    def size_bytes(self) -> int:
        return self.block_size * self.num_of_blocks


class FileSystem(_Record):
    _FIELDS = ("id", "name", "total_space", "free_space", "pool_id", "system_id", "plugin_data")

    def __init__(self, _id, _name, _total_space, _free_space, _pool_id, _system_id, _plugin_data=None) -> None:
        self._id, self._name, self._total_space, self._free_space = _id, _name, _total_space, _free_space
        self._pool_id, self._system_id, self._plugin_data = _pool_id, _system_id, _plugin_data


class Capabilities:
    """A system's capabilities: a 512-slot table, each slot SUPPORTED or UNSUPPORTED."""

    UNSUPPORTED = 0
    SUPPORTED = 1
    _NUM = 512
    VOLUMES = 20
    VOLUME_CREATE = 21
    VOLUME_RESIZE = 22
    VOLUME_REPLICATE = 23
    VOLUME_REPLICATE_CLONE = 24
    VOLUME_REPLICATE_COPY = 25
    VOLUME_REPLICATE_MIRROR_ASYNC = 26
    VOLUME_REPLICATE_MIRROR_SYNC = 27
    VOLUME_COPY_RANGE_BLOCK_SIZE = 28
    VOLUME_COPY_RANGE = 29
    VOLUME_COPY_RANGE_CLONE = 30
    VOLUME_COPY_RANGE_COPY = 31
    VOLUME_DELETE = 33
    VOLUME_ENABLE = 34
    VOLUME_DISABLE = 35
    VOLUME_MASK = 36
    VOLUME_UNMASK = 37
    ACCESS_GROUPS = 38
    VOLUME_CHILD_DEPENDENCY = 45
    VOLUME_CHILD_DEPENDENCY_RM = 46
    VOLUME_THIN = 55
    FS = 100
    FS_DELETE = 101
    FS_RESIZE = 102
    FS_CREATE = 103
    FS_CLONE = 104
    FILE_CLONE = 105
    POOLS_QUICK_SEARCH = 210
    VOLUMES_QUICK_SEARCH = 211
    DISKS_QUICK_SEARCH = 212
    ACCESS_GROUPS_QUICK_SEARCH = 213
    FS_QUICK_SEARCH = 214
    NFS_EXPORTS_QUICK_SEARCH = 215
    TARGET_PORTS_QUICK_SEARCH = 217
    DISKS = 220

    def __init__(self) -> None:
        self._cap = bytearray(Capabilities._NUM)

    def supported(self, capability: int) -> bool:
        return self.get(capability) == Capabilities.SUPPORTED

    def get(self, capability: int) -> int:
        return self._cap[capability] if 0 <= capability < len(self._cap) else Capabilities.UNSUPPORTED

    def set(self, capability: int, value: int = SUPPORTED) -> None:
        self._cap[capability] = value

    def enable_all(self) -> None:
        self._cap[:] = bytes([Capabilities.SUPPORTED]) * len(self._cap)
