"""The table of storage URI schemes: each scheme parses its URIs, refuses bad ones with 5014, and does
its five operations; the table is the one place a scheme is known.

Operations run for real: localfs on tmp_path, posixfs as a bind mount by a real supervdsmd (as root),
iSCSI and mount checks against this host's sysfs and mount table.
"""

import inspect
import os
import subprocess
import urllib.parse

import pytest

from hsm.api.legacy_connections import ISCSI, LOCALFS, NFS, POSIXFS, legacy_uri
from hsm.connections import uri
from hsm.connections.backends import Backends, _unescape, filesystem_of, mounted_paths
from hsm.connections.schemes import SCHEMES, Host, LocalfsScheme, Scheme, StorageURI, mountpoint
from hsm.errors import InvalidConnectionURI, InvalidParameterException, StorageServerConnectionError
from supervdsm.client import SupervdsmClient

OPERATIONS = ("parse", "connect", "disconnect", "is_connected", "path")
IQN = "iqn.2026-11.org.example:disk1"


def test_the_table_holds_the_four_schemes_by_their_names():
    assert list(SCHEMES) == ["nfs", "posixfs", "iscsi", "localfs"]
    for name, scheme in SCHEMES.items():
        assert isinstance(scheme, Scheme) and scheme.name == name


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_has_the_five_operations(name):
    scheme = SCHEMES[name]
    assert not inspect.isabstract(type(scheme))
    for operation in OPERATIONS:
        assert not getattr(getattr(type(scheme), operation), "__isabstractmethod__", False), operation


def test_a_scheme_without_one_operation_cannot_be_made():
    class Incomplete(Scheme):
        name = "incomplete"

        def parse(self, uri, parts):
            return StorageURI(self.name, uri)

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


@pytest.mark.parametrize("text", ["ftp://host/x", "http://host/x", "file:///x", "/no/scheme", "nfs4://host/x"])
def test_a_scheme_not_in_the_table_is_refused(text):
    with pytest.raises(InvalidConnectionURI) as error:
        uri.parse(text)
    assert error.value.code == 5014
    assert "(known: nfs, posixfs, iscsi, localfs)" in str(error.value)


def test_one_class_and_one_table_entry_add_a_scheme(monkeypatch, tmp_path):
    """A scheme put in the table is parsed by uri.parse and driven by the backends, with nothing else."""
    class ScratchScheme(LocalfsScheme):
        name = "scratch"

        def parse(self, text, parts):
            return StorageURI(self.name, f"scratch://{parts.path}", {"scheme": self.name, "path": parts.path})

    monkeypatch.setitem(SCHEMES, "scratch", ScratchScheme())
    storage = uri.parse(f"scratch://{tmp_path}")
    backends = Backends(SupervdsmClient(str(tmp_path / "no.sock")), str(tmp_path / "mnt"))
    assert (storage.key, backends.path(storage), backends.is_connected(storage)) == \
        (f"scratch://{tmp_path}", str(tmp_path), True)


@pytest.mark.parametrize("text, key, info", [
    ("nfs://Server.Example.com/export/", "nfs://server.example.com/export",
     {"scheme": "nfs", "server": "server.example.com", "export": "/export", "spec": "server.example.com:/export",
      "vfsType": "nfs", "options": "soft,nosharecache"}),
    ("nfs://host:2049/a//b/?timeo=600&version=4.2", "nfs://host:2049/a/b?timeo=600&version=4.2",
     {"scheme": "nfs", "server": "host", "export": "/a/b", "spec": "host:/a/b", "vfsType": "nfs", "port": 2049,
      "options": "soft,nosharecache,timeo=600,vers=4.2,port=2049"}),
    ("nfs://[FE80::1]/e?proto=tcp&retrans=3", "nfs://[fe80::1]/e?proto=tcp&retrans=3",
     {"scheme": "nfs", "server": "[fe80::1]", "export": "/e", "spec": "[fe80::1]:/e", "vfsType": "nfs",
      "options": "soft,nosharecache,proto=tcp,retrans=3"}),
    ("posixfs://?spec=/dev/sdb1&vfsType=ext4&options=noatime,,acl",
     "posixfs://?spec=/dev/sdb1&vfsType=ext4&options=acl,noatime",
     {"scheme": "posixfs", "spec": "/dev/sdb1", "vfsType": "ext4", "options": "acl,noatime"}),
    ("posixfs:///?spec=server:/export&vfsType=glusterfs", "posixfs://?spec=server:/export&vfsType=glusterfs",
     {"scheme": "posixfs", "spec": "server:/export", "vfsType": "glusterfs", "options": ""}),
    (f"iscsi://127.0.0.1/{IQN}", f"iscsi://127.0.0.1:3260/{IQN}?iface=default",
     {"scheme": "iscsi", "portal": "127.0.0.1:3260", "target": IQN, "iface": "default"}),
    (f"iscsi://bob:secret@Portal:3261/{IQN}?iface=eth0", f"iscsi://bob@portal:3261/{IQN}?iface=eth0",
     {"scheme": "iscsi", "portal": "portal:3261", "target": IQN, "iface": "eth0", "user": "bob"}),
    ("localfs:///srv/./b//c/", "localfs:///srv/b/c", {"scheme": "localfs", "path": "/srv/b/c"}),
    ("LOCALFS:///srv/x%20y", "localfs:///srv/x y", {"scheme": "localfs", "path": "/srv/x y"}),
])
def test_each_scheme_parses_and_normalizes_its_uris(text, key, info):
    storage = uri.parse(text)
    assert (storage.scheme, storage.key, storage.info) == (info["scheme"], key, info)


@pytest.mark.parametrize("text, message", [
    ("", "expected a URI string"), (42, "expected a URI string"), (None, "expected a URI string"),
    ("nfs://[::1", "Invalid IPv6 URL"), ("nfs://host/e#part", "no '#' part is allowed"),
    ("nfs://", "bad host ''"), ("nfs://ho_st/e", "bad host 'ho_st'"), ("nfs://host:x/e", "bad port"),
    ("nfs://u:p@host/e", "NFS takes no user or password"), ("nfs://host/../etc", "without '..'"),
    ("nfs://host/e?version=4&bogus=1", "unknown parameter 'bogus' (known: proto, retrans, timeo, version)"),
    ("nfs://host/e?version=4&version=3", "parameter 'version' given twice"),
    ("nfs://host/e?version=4;x", "has characters that are not allowed"), ("nfs://host/e?&", "malformed query"),
    ("posixfs://?spec=/x", "spec and vfsType are required"), ("posixfs://?spec=/x&vfsType=e:4", "bad vfsType"),
    ("posixfs://host/?spec=/x&vfsType=ext4", "expected posixfs://?spec=...&vfsType=...&options=..."),
    ("posixfs://?spec=relative&vfsType=ext4", "expected an absolute path"),
    ("iscsi://127.0.0.1/not-an-iqn", "expected a target name"), ("iscsi://h/naa.123", "expected a target name"),
    (f"iscsi://:secret@h/{IQN}", "a password needs a user"), (f"iscsi://h/{IQN}?iface=a:b", "bad iface"),
    (f"iscsi:///{IQN}", "bad host"), ("localfs://relative", "expected localfs:///absolute/path"),
    ("localfs:///x?y=1", "expected localfs:///absolute/path"), ("localfs:///a/../../b", "without '..'"),
])
def test_bad_uris_are_refused_with_5014_and_why(text, message):
    with pytest.raises(InvalidConnectionURI) as error:
        uri.parse(text)
    assert error.value.code == 5014
    assert message in str(error.value)


def test_a_chap_password_is_kept_out_of_the_key_the_info_and_the_repr():
    storage = uri.parse(f"iscsi://bob:s%40cr3t@127.0.0.1/{IQN}")
    assert (storage.user, storage.password) == ("bob", "s@cr3t")
    assert "cr3t" not in storage.key + repr(storage.info) + repr(storage)


def test_one_spec_mounted_two_ways_has_two_mount_points(tmp_path):
    host = Host(SupervdsmClient(str(tmp_path / "no.sock")), str(tmp_path / "mnt"))
    plain, bound = (uri.parse(f"posixfs://?spec=/srv/my_export&vfsType=none{options}") for options in
                    ("", "&options=bind"))
    paths = [SCHEMES["posixfs"].path(storage, host) for storage in (plain, bound)]
    assert paths == [mountpoint(str(tmp_path / "mnt"), storage) for storage in (plain, bound)]
    assert paths[0] != paths[1] and all(os.path.basename(path).startswith("_srv_my__export.") for path in paths)
    assert not any(SCHEMES["posixfs"].is_connected(storage, host) for storage in (plain, bound))


@pytest.mark.parametrize("dom_type, con, key", [
    (NFS, {"connection": "server:/export", "protocol_version": "4.2"}, "nfs://server/export?version=4.2"),
    (NFS, {"connection": "server:/export", "protocol_version": "auto"}, "nfs://server/export"),
    (LOCALFS, {"connection": "/srv/local"}, "localfs:///srv/local"),
    (POSIXFS, {"connection": "/dev/sdb1", "vfs_type": "ext4", "mnt_options": "noatime"},
     "posixfs://?spec=/dev/sdb1&vfsType=ext4&options=noatime"),
    (POSIXFS, {"connection": "/srv/export"}, "posixfs://?spec=/srv/export&vfsType=none"),
    (ISCSI, {"connection": "10.0.0.1", "iqn": IQN, "port": "3261", "user": "a@b", "password": "p:w/d"},
     f"iscsi://a@b@10.0.0.1:3261/{IQN}?iface=default"),
])
def test_vdsm_connection_dicts_make_uris_of_the_table(dom_type, con, key):
    storage = uri.parse(legacy_uri(dom_type, con))
    assert storage.key == key
    assert storage.password == con.get("password", "")


def test_a_vdsm_domain_type_without_a_scheme_is_1000():
    with pytest.raises(InvalidParameterException) as error:
        legacy_uri(5, {"connection": "x"})
    assert error.value.code == 1000


def test_a_local_directory_is_connected_while_it_is_there(tmp_path):
    backends = Backends(SupervdsmClient(str(tmp_path / "no.sock")), str(tmp_path / "mnt"))
    storage = uri.parse(f"localfs://{urllib.parse.quote(str(tmp_path / 'local dir'))}")
    with pytest.raises(StorageServerConnectionError) as error:
        backends.connect(storage)
    assert error.value.code == 451 and str(error.value).endswith(f"{tmp_path / 'local dir'}: no such directory")
    (tmp_path / "local dir").mkdir()
    backends.connect(storage)
    assert (backends.path(storage), backends.is_connected(storage)) == (str(tmp_path / "local dir"), True)
    backends.disconnect(storage)
    assert (tmp_path / "local dir").is_dir()


def test_a_connection_without_supervdsmd_fails_as_a_connection_error(tmp_path):
    backends = Backends(SupervdsmClient(str(tmp_path / "no.sock")), str(tmp_path / "mnt"))
    for text in (f"posixfs://?spec={tmp_path}&vfsType=none&options=bind", f"iscsi://127.0.0.1/{IQN}"):
        with pytest.raises(StorageServerConnectionError) as error:  # not supervdsmd's own 5003
            backends.connect(uri.parse(text))
        assert error.value.code == 451 and "supervdsmd is not reachable" in str(error.value), text


def test_an_iscsi_target_without_a_session_is_not_connected_and_has_no_path(tmp_path):
    backends = Backends(SupervdsmClient(str(tmp_path / "no.sock")), str(tmp_path / "mnt"))
    storage = uri.parse(f"iscsi://127.0.0.1/{IQN}.nosession")
    assert (backends.path(storage), backends.is_connected(storage)) == ("", False)


def test_the_mount_table_readers_keep_their_names():
    assert _unescape(r"a\040b\011c\134d") == "a b\tc\\d"
    assert filesystem_of("/proc/self") == "proc"
    assert mounted_paths()["/proc"]["vfsType"] == "proc"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_posixfs_bind_mount_is_made_checked_and_torn_down_by_its_scheme(tmp_path):
    from tests.supervdsmd import Supervdsmd

    repository = tmp_path / "rhev"
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "hello").write_text("world")
    supervdsmd = Supervdsmd(str(tmp_path / "sv"), config={"irs": {"repository": str(repository)}},
                            mount_sources=str(tmp_path)).start()
    client = supervdsmd.client()
    backends = Backends(client, str(repository / "mnt"))
    storage = uri.parse(f"posixfs://?spec={exported}&vfsType=none&options=bind")
    path = backends.path(storage)
    try:
        assert not backends.is_connected(storage)
        backends.connect(storage)
        assert backends.is_connected(storage)
        assert (tmp_path / path / "hello").read_text() == "world"
        assert path in backends.unmanaged_mounts(set()) and path not in backends.unmanaged_mounts({path})
        backends.disconnect(storage)
        assert not backends.is_connected(storage)
        backends.disconnect(storage)  # already gone: nothing to do, no error
    finally:
        client.close()
        supervdsmd.kill()
        subprocess.run(["umount", "-l", path], check=False, capture_output=True)
