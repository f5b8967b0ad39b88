"""[rpc] ssl: TLS with client certificates required, as VDSM's port did."""

import shutil
import ssl
import subprocess
import xmlrpc.client

import pytest

from hsm.rpc.client import ServiceProxy, TlsFiles
from tests.hsmd import HSM_CLI

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder, name):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder)


def _signed(folder, name, ca):
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "otherca")
    _signed(folder, "server", "ca")
    _signed(folder, "client", "ca")
    _signed(folder, "stranger", "otherca")
    return folder


@pytest.fixture
def tls_hsmd(make_hsmd, pki):
    p = str(pki)
    daemon = make_hsmd(
        config={"rpc": {"ssl": "true", "key_file": f"{p}/server.key", "cert_file": f"{p}/server.pem",
                        "ca_file": f"{p}/ca.pem"}},
        tls=TlsFiles(f"{p}/client.key", f"{p}/client.pem", f"{p}/ca.pem"))
    return daemon.start()


def test_client_with_certificate_is_served(tls_hsmd):
    assert tls_hsmd.proxy().ping()["status"]["code"] == 0
    assert tls_hsmd.proxy().getCapabilities()["info"]["pid"] == tls_hsmd.process.pid


def test_client_without_certificate_is_refused(tls_hsmd, pki):
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.check_hostname = False
    proxy = xmlrpc.client.ServerProxy(f"https://{tls_hsmd.address}/RPC2", context=context)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        proxy.ping()
    proxy("close")()
    assert tls_hsmd.proxy().ping()["status"]["code"] == 0


def test_client_with_certificate_of_another_ca_is_refused(tls_hsmd, pki):
    p = str(pki)
    proxy = ServiceProxy(tls_hsmd.address, tls=TlsFiles(f"{p}/stranger.key", f"{p}/stranger.pem", f"{p}/ca.pem"),
                         timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        proxy.ping()
    proxy.close()
    assert tls_hsmd.proxy().ping()["status"]["code"] == 0


def test_plain_http_to_tls_port_fails(tls_hsmd):
    proxy = ServiceProxy(tls_hsmd.address, timeout=10)
    with pytest.raises((xmlrpc.client.ProtocolError, ConnectionError, OSError)):
        proxy.ping()
    proxy.close()


def test_cli_over_tls(tls_hsmd, pki):
    p = str(pki)
    done = subprocess.run([HSM_CLI, "--address", tls_hsmd.address, "--tls", f"{p}/client.key",
                           f"{p}/client.pem", f"{p}/ca.pem", "ping"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"code": 0' in done.stdout


def test_tls_allows_listening_beyond_loopback(make_hsmd, pki):
    p = str(pki)
    daemon = make_hsmd(config={"rpc": {"ssl": "true", "key_file": f"{p}/server.key",
                                       "cert_file": f"{p}/server.pem", "ca_file": f"{p}/ca.pem"}},
                       tls=TlsFiles(f"{p}/client.key", f"{p}/client.pem", f"{p}/ca.pem"))
    daemon.address = f"0.0.0.0:{daemon.port}"
    daemon.start()
    daemon.address = f"127.0.0.1:{daemon.port}"
    assert daemon.proxy().ping()["status"]["code"] == 0
