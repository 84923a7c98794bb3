"""TLS against a real ``tuna server --tls-cert/--tls-key`` with certificates made by the
``openssl`` command line: the client trusting the CA connects, one without it is refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import tuna

from conftest import DATASET, TunaServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=tuna sdk test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


def test_tls_with_the_ca_connects_and_without_it_is_refused(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    server = TunaServer(
        tmp_path / "data", extra=["--tls-cert", str(cert), "--tls-key", str(key)]
    )
    server.start(env={"TUNA_CA_FILE": str(ca)})
    try:
        with tuna.Client(server.target, tls=tuna.TLS(ca_file=ca), timeout=10) as client:
            uploaded = client.files.upload(DATASET)
            assert client.files.get(uploaded.id).sha256 == uploaded.sha256
        with tuna.Client(server.target, tls=True, timeout=5) as untrusted:
            with pytest.raises(tuna.Unavailable):
                list(untrusted.files.list())
        with tuna.Client(server.target, timeout=5) as plain:
            with pytest.raises(tuna.TunaError):
                list(plain.files.list())
    finally:
        server.stop()
