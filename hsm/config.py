"""hsm.conf: every option with its type, default and meaning, in one place.

The file is INI. An unknown section or option, or a value that does not parse
as the option's type, is a ConfigError naming it: hsmd refuses to start rather
than run with a setting it does not understand.
"""

from __future__ import annotations

import configparser
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hsm.errors import ConfigError, InvalidParameterException
from hsm.sizes import format_size, parse_size

DEFAULT_PATH = "/etc/hsm/hsm.conf"


def default_path(given: str | None) -> str | None:
    """The hsm.conf to read: the one given, else /etc/hsm/hsm.conf if it exists, else none (built-in defaults)."""
    if given is None and os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    return given


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _int(text: str) -> int:
    return int(text.strip(), 0)


def _size(text: str) -> int:
    """A byte count, read as every size hsm takes (hsm.sizes); getHsmConfig sends it as a decimal string."""
    try:
        return parse_size("size", text)
    except InvalidParameterException as e:
        raise ValueError(e.detail) from None


def _count(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"{text.strip()!r} is not 1 or more")
    return value


def _positive(text: str) -> float:
    value = float(text.strip())
    if not value > 0:
        raise ValueError(f"{text.strip()!r} is not above 0")
    return value


def _octal(text: str) -> int:
    return int(text.strip(), 8)


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


def _lsm_uris(text: str) -> list[str]:
    """libstoragemgmt URIs (`plugin[+ssl]://[user@]host[:port][?params]`), each once, none with a password."""
    uris = _list(text)
    for uri in uris:
        parts = urllib.parse.urlsplit(uri)
        if not parts.scheme or not uri.startswith(f"{parts.scheme}://"):
            raise ValueError(f"{uri!r} is not a libstoragemgmt URI (plugin://...)")
        if parts.password is not None:
            raise ValueError(f"{parts.scheme}://... carries a password: give it in array_password")
    if len(set(uris)) != len(uris):
        raise ValueError("a URI is given twice")
    return uris


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    parse.__name__ = "|".join(allowed)
    return parse


_TYPE_NAMES = {str: "string", _int: "integer", float: "number", _bool: "boolean",
               _octal: "octal", _list: "list", _size: "bytes", _count: "count", _positive: "number",
               _lsm_uris: "list"}


@dataclass(frozen=True)
class Option:
    section: str
    name: str
    parse: Callable[[str], Any]
    default: str
    description: str
    packaged: str | None = None  # the value the shipped hsm.conf sets, where it differs from the default
    coming: str = ""  # the feature that will use it; until then only its default is accepted
    secret: bool = False  # left out of getHsmConfig and config dumps

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES.get(self.parse, self.parse.__name__)

    def wire(self, value: Any) -> Any:
        """The value as getHsmConfig sends it: a size as a decimal string (api.md), others as they are."""
        return format_size(value) if self.parse is _size else value


# Options VDSM's configuration has (or hsm's design names) whose features are not built yet.
_BLOCK = "block repositories"


def _options() -> list[Option]:
    o = Option
    return [
        # [irs]: the storage options VDSM kept in vdsm.conf, and hsmd's places.
        o("irs", "state_dir", str, "/var/lib/hsm", "hsmd's persistent state: tasks, requests, the default repository"),
        o("irs", "default_repository", str, "auto", "a localfs-1 repository connected as 'local' at start-up: auto (under state_dir), a path, or none"),
        o("irs", "repository", str, "/rhev/data-center", "root of storage mounts and links, as VDSM's [irs] repository"),
        o("irs", "sd_health_check_delay", float, "10", "seconds between two checks of a repository by its monitor"),
        o("irs", "process_pool_timeout", float, "60", "seconds a file operation on repository storage may take"),
        o("irs", "process_pool_max_slots_per_domain", _int, "10", "concurrent file operations per repository"),
        o("irs", "task_resource_default_timeout", _int, "120000", "milliseconds a task waits for a resource lock"),
        o("irs", "prepare_image_timeout", _int, "600000", "milliseconds prepareImage waits for its image lock"),
        o("irs", "lvm_dev_whitelist", _list, "", "devices always accepted by the LVM filter", coming=_BLOCK),
        o("irs", "lv_activation", _choice("lvm", "loop"), "lvm", "how an LV of a block repository is made usable: lvm (lvchange -ay, device-mapper) or loop (a loop device over its extents, for hosts without device-mapper)"),
        o("irs", "qcow2_compat", _choice("0.10", "1.1"), "1.1", "qcow2 compat level of new volumes"),
        o("irs", "udev_settle_timeout", _int, "5", "seconds to wait for udev events to settle", coming=_BLOCK),
        o("irs", "scsi_rescan_maximal_timeout", _int, "30", "seconds a SCSI rescan may take", coming=_BLOCK),
        o("irs", "iscsi_default_ifaces", _list, "default", "iSCSI interfaces used when a connection names none", coming=_BLOCK),
        o("irs", "use_volume_leases", _bool, "false", "prepareImage takes the image's sanlock volume lease for this host (shared repositories), so another host's prepareImage of it is refused"),
        o("irs", "maximum_allowed_pvs", _int, "8", "most physical volumes in one block repository", coming=_BLOCK),
        o("irs", "progress_interval", float, "30", "seconds between progress lines in the log for long copies"),
        o("irs", "hooks_dir", str, "/usr/libexec/hsm/hooks", "folder of before_hsmd_start/ and after_hsmd_stop/ hook folders"),
        o("irs", "hook_timeout", float, "60", "seconds one lifecycle hook may run before it is killed"),
        # [rpc]: the XML-RPC service.
        o("rpc", "host", str, "127.0.0.1", "address to listen on; anything but loopback requires ssl"),
        o("rpc", "port", _int, "54324", "TCP port of the XML-RPC service"),
        o("rpc", "ssl", _bool, "false", "serve TLS and require client certificates signed by ca_file", packaged="true"),
        o("rpc", "key_file", str, "/etc/pki/hsm/keys/hsmkey.pem", "the server's private key"),
        o("rpc", "cert_file", str, "/etc/pki/hsm/certs/hsmcert.pem", "the server's certificate"),
        o("rpc", "ca_file", str, "/etc/pki/hsm/certs/cacert.pem", "CA certificates that sign accepted client certificates"),
        o("rpc", "threads", _int, "16", "worker threads answering calls"),
        o("rpc", "unix_socket", str, "", "path of a Unix socket serving the same API to local callers (checked by SO_PEERCRED); empty: none", packaged="/run/hsm/hsmd.sock"),
        o("rpc", "unix_socket_group", str, "", "group owning the Unix socket, whose members may call; empty: the socket keeps hsmd's group, no member check", packaged="hsm"),
        o("rpc", "unix_socket_mode", _octal, "0660", "permissions of the Unix socket"),
        o("rpc", "allowed_uids", _list, "0", "user ids allowed to call on the Unix socket, besides hsmd's own and members of unix_socket_group"),
        o("rpc", "listen_backlog", _int, "1024", "pending connections the kernel keeps before refusing"),
        o("rpc", "max_connections", _int, "1000", "connections open at once; more are closed as they arrive"),
        o("rpc", "max_connections_per_peer", _int, "128", "connections open at once from one address; more are closed as they arrive"),
        o("rpc", "max_request_bytes", _size, "10485760", "largest request body accepted"),
        o("rpc", "header_timeout", float, "10", "seconds to send a request's headers, from its first byte (for a new connection: from its start, TLS handshake included)"),
        o("rpc", "body_timeout", float, "30", "seconds to send a request's body once its headers are in"),
        o("rpc", "idle_timeout", float, "60", "seconds a keep-alive connection may wait between requests, or leave its answer unread"),
        o("rpc", "shutdown_timeout", float, "30", "seconds in-flight calls get to finish on SIGTERM"),
        o("rpc", "request_id_ttl", _int, "86400", "seconds an answer is kept for a repeated options.requestId"),
        o("rpc", "max_request_ids", _int, "10000", "answers kept for repeated options.requestId, the oldest forgotten first; 0: no limit"),
        # [tasks]
        o("tasks", "mode", _choice("non-transparent", "transparent"), "non-transparent", "who owns task lifecycles: hsmd, or the caller (VDSM)"),
        o("tasks", "thread_pool_size", _int, "10", "tasks run at once"),
        o("tasks", "max_tasks", _int, "500", "tasks queued or running before new ones are refused"),
        o("tasks", "finished_ttl", _int, "3600", "seconds an ended task is kept in non-transparent mode; 0: no time limit"),
        o("tasks", "max_finished", _int, "1000", "ended tasks kept in non-transparent mode, the oldest forgotten first; 0: no limit (both 0: until clearTask)"),
        o("tasks", "diagnostics", _bool, "false", "serve runTestTask (sleeping steps, crash injection) for tests and benchmarks"),
        # [connections]
        o("connections", "monitor_interval", float, "10", "seconds between checks of a managed connection"),
        o("connections", "reconnect_backoff_min", float, "1", "first delay before reconnecting a lost connection"),
        o("connections", "reconnect_backoff_max", float, "300", "longest delay between reconnect attempts"),
        # [sanlock]
        o("sanlock", "host_id", _int, "1", "this host's id in every lockspace (1-2000)"),
        o("sanlock", "io_timeout", _int, "10", "sanlock I/O timeout in seconds for new lockspaces"),
        o("sanlock", "run_dir", str, "/run/sanlock", "the run folder of the sanlock daemon hsmd talks to (its SANLOCK_RUN_DIR); hsmd's user must be in the group of its socket"),
        # [supervdsm]
        o("supervdsm", "socket", str, "/run/hsm/supervdsm.sock", "supervdsmd's Unix socket"),
        o("supervdsm", "group", str, "root", "group owning the socket", packaged="hsm"),
        o("supervdsm", "mode", _octal, "0660", "permissions of the socket"),
        o("supervdsm", "allowed_uids", _list, "0", "users (ids or names) allowed to call supervdsmd", packaged="0, hsm"),
        o("supervdsm", "log_dir", str, "/var/log/supervdsm", "folder of supervdsm.log: root's alone, so hsmd's user cannot touch the record of privileged calls"),
        o("supervdsm", "call_timeout", float, "60", "seconds a privileged call may run"),
        o("supervdsm", "connect_timeout", float, "1", "seconds to reach supervdsmd before a call fails"),
        o("supervdsm", "mount_sources", _list, "", "folders whose contents may be bind-mounted or loop-mounted, besides [irs] repository for loop mounts"),
        o("supervdsm", "udev_rules_dir", str, "/etc/udev/rules.d", "folder of the udev rules appropriateDevice writes (one 99-vdsm-<guid>-<vmId>.rules per LUN and VM) and inappropriateDevices removes"),
        o("supervdsm", "max_calls", _count, "8", "privileged calls in flight at once; more fail at once (5003), so a frozen supervdsmd never takes every RPC worker"),
        # [offload]
        o("offload", "enabled", _bool, "true", "copy by the array, reflink or copy_file_range before qemu-img; false: qemu-img only"),
        o("offload", "arrays", _lsm_uris, "", "libstoragemgmt URIs of storage arrays (sim://, targetd+ssl://admin@host, ...), each the array's id; a password goes in array_password"),
        o("offload", "array_password", str, "", "password for the arrays' libstoragemgmt URIs", secret=True),
        o("offload", "capabilities_refresh", _positive, "3600", "seconds between refreshes of array capabilities"),
        o("offload", "array_job_timeout", _positive, "300", "seconds an array verb waits for the array's job (lsm job_status) before answering 5005; the job goes on on the array"),
        # [logging]
        o("logging", "config_file", str, "/etc/hsm/logger.conf", "logging configuration (Python fileConfig format)"),
        o("logging", "log_dir", str, "/var/log/hsm", "folder of hsm.log"),
        o("logging", "level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "level of hsm.log"),
    ]


OPTIONS: dict[tuple[str, str], Option] = {(opt.section, opt.name): opt for opt in _options()}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(opt.section for opt in OPTIONS.values()))


class Section:
    """One section's typed values, read as attributes: config.rpc.port."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None


class Config:
    """The effective configuration: defaults, then the file, then overrides."""

    def __init__(self, values: dict[str, dict[str, Any]], source: str = "") -> None:
        self._values = values
        self.source = source

    def __getattr__(self, section: str) -> Section:
        if section.startswith("_") or section not in self._values:
            raise AttributeError(section)
        return Section(self._values[section])

    def get(self, section: str, name: str) -> Any:
        return self._values[section][name]

    def as_dict(self, section: str | None = None) -> dict[str, dict[str, Any]]:
        """{section: {option: value}} of the options hsmd uses (those still coming, and secrets, are left out)."""
        if section is not None and section not in self._values:
            raise ConfigError(f"no section [{section}]")
        names = [section] if section else list(self._values)
        used = {name: {key: value for key, value in self._values[name].items()
                       if not OPTIONS[(name, key)].coming and not OPTIONS[(name, key)].secret}
                for name in names}
        return {name: values for name, values in used.items() if values or name == section}

    def as_wire(self, section: str | None = None) -> dict[str, dict[str, Any]]:
        """as_dict() as getHsmConfig answers it: sizes as decimal strings."""
        return {name: {key: OPTIONS[(name, key)].wire(value) for key, value in options.items()}
                for name, options in self.as_dict(section).items()}


def _parse(opt: Option, text: str) -> Any:
    try:
        return opt.parse(text)
    except ValueError as e:
        raise ConfigError(f"[{opt.section}] {opt.name} = {text!r}: expected {opt.type_name}: {e}") from None


class _CaseSensitiveParser(configparser.ConfigParser):
    """Option names are case-sensitive, as written here."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def load(path: str | None = None, overrides: dict[tuple[str, str], str] | None = None) -> Config:
    """Read `path` (None: defaults only) and apply `overrides` (given as text)."""
    texts = {key: opt.default for key, opt in OPTIONS.items()}
    if path is not None:
        parser = _CaseSensitiveParser(interpolation=None, default_section="\0none")
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except configparser.Error as e:
            raise ConfigError(f"{path}: {e.message}") from None
        unknown = [f"[{s}]" for s in parser.sections() if s not in SECTIONS]
        unknown += [f"[{s}] {name}" for s in parser.sections() if s in SECTIONS
                    for name in parser[s] if (s, name) not in OPTIONS]
        if unknown:
            raise ConfigError(f"{path}: unknown " + ", ".join(unknown))
        for section in parser.sections():
            for name, text in parser[section].items():
                texts[(section, name)] = text
    for key, text in (overrides or {}).items():
        if key not in OPTIONS:
            raise ConfigError(f"unknown option [{key[0]}] {key[1]}")
        texts[key] = text
    values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, opt in OPTIONS.items():
        values[opt.section][opt.name] = _parse(opt, texts[key])
        if opt.coming and values[opt.section][opt.name] != _parse(opt, opt.default):
            raise ConfigError(f"[{opt.section}] {opt.name} = {texts[key].strip()!r}: not supported yet "
                              f"(comes with {opt.coming}); leave it at its default, {opt.default or 'empty'}")
    return Config(values, source=path or "")


def sample() -> str:
    """The hsm.conf shipped in etc/hsm/: every option at its default, commented out, but
    for those the package sets (hsmd as user hsm, TLS on, the local Unix socket)."""
    lines = ["# hsm.conf: the configuration of hsmd and supervdsmd. Every option is shown; those",
             "# commented out are at their default, the others are what the package sets.",
             "# Unknown options or badly typed values stop hsmd with a message naming them."]
    for section in SECTIONS:
        if all(opt.coming for opt in OPTIONS.values() if opt.section == section):
            continue
        lines += ["", f"[{section}]"]
        for opt in OPTIONS.values():
            if opt.section != section or opt.coming:
                continue
            if opt.packaged is None:
                lines += ["", f"# {opt.description} ({opt.type_name})", f"# {opt.name} = {opt.default}"]
            else:
                lines += ["", f"# {opt.description} ({opt.type_name}; default: {opt.default or 'empty'})",
                          f"{opt.name} = {opt.packaged}"]
    return "\n".join(lines) + "\n"
