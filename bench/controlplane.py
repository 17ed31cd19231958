"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

Takes the binaries tests/cluster/build.sh built (Kubernetes v1.34.4, etcd v3.6.4, in
`~/.cache/keruta-harvester/k8s-v1.34.4` or `$KERUTA_K8S_BIN`); gives `ControlPlane`, which makes
its certificates with openssl, starts the three on free loopback ports with RBAC on, waits until
they are ready, serves an admin kubeconfig and an audit log of what ServiceAccounts asked, and
stops them; and `kubectl()`, the kubectl built beside them, for the path a user takes.
tests/kube_backends.py runs the Kubernetes tests on it, and the benchmark's `controller`
scenario measures `harvester controller` on it. It lives in bench/ because the tests already
import from bench/ (tests/process.py) and never the other way round.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml  # type: ignore[import-untyped]
from kubernetes import client, utils

K8S_VERSION = "v1.34.4"
BIN = Path(
    os.environ.get("KERUTA_K8S_BIN")
    or Path.home() / ".cache" / "keruta-harvester" / f"k8s-{K8S_VERSION}"
)
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
KUBECTL_ENV = "KERUTA_KUBECTL"
# The one reason every test that needs these binaries (or kubectl) gives when they are missing.
NOT_BUILT = "no Kubernetes binaries built (make cluster; it needs Go)"
CONTROLLERS = (
    "garbage-collector-controller,ttl-after-finished-controller,"
    "persistentvolumeclaim-protection-controller,job-controller,namespace-controller,"
    "serviceaccount-controller,serviceaccount-token-controller,"
    "root-ca-certificate-publisher-controller"
)


def create(
    api_client: client.ApiClient, doc: dict[str, Any], namespace: str, *, dry_run: str | None = None
) -> None:
    """Create one object from its manifest (as `kubectl create -f` would)."""
    extra = {"dry_run": dry_run} if dry_run else {}
    utils.create_from_dict(api_client, doc, namespace=namespace, **extra)  # type: ignore[no-untyped-call]


def binaries_built() -> bool:
    return all((BIN / name).is_file() for name in BINARIES)


def kubectl() -> Path | None:
    """`$KERUTA_KUBECTL`, else the kubectl build.sh built from the control plane's own module
    (so its kustomize and its client are the release the tests run against), else None."""
    chosen = os.environ.get(KUBECTL_ENV)
    if chosen:
        return Path(chosen)
    built = BIN / "kubectl"
    return built if built.is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, started fresh in `workdir`."""

    def __init__(self, workdir: Path, *, apiserver_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.apiserver_args = apiserver_args  # extra kube-apiserver flags, after the usual ones
        self.etcd_url = ""
        self.pki = workdir / "pki"
        self.admin_token = secrets.token_hex(16)
        self.url = ""
        self.admin_kubeconfig = workdir / "admin.kubeconfig"
        self.audit_log = workdir / "audit.log"
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> ControlPlane:
        self._make_pki()
        etcd_port, peer_port, metrics_port = _free_port(), _free_port(), _free_port()
        api_port, kcm_port = _free_port(), _free_port()
        etcd_url = self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            f"--listen-metrics-urls=http://127.0.0.1:{metrics_port}",
        )
        self._wait(f"{etcd_url}/health", timeout, lambda body: b'"health":"true"' in body)
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--audit-policy-file={self._write_audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-maxsize=0",
            *self.apiserver_args,
        )
        self.url = f"https://127.0.0.1:{api_port}"
        self._write_kubeconfig(self.admin_kubeconfig, self.admin_token, "default")
        self._wait(f"{self.url}/readyz", timeout, lambda body: body.strip() == b"ok", auth=True)
        self._spawn(
            "kube-controller-manager",
            f"--kubeconfig={self.admin_kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            "--leader-elect=false",
            f"--controllers={CONTROLLERS}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
        )
        self._wait(
            f"https://127.0.0.1:{kcm_port}/healthz",
            timeout,
            lambda body: body.strip() == b"ok",
            verify=False,
        )
        return self

    def stop(self) -> None:
        # The API server first and etcd last: an API server whose etcd vanished first waits out
        # its in-flight requests' timeouts (about a minute) before it exits.
        for name, process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log = self.workdir / f"{name}.log"
            if log.exists() and process.returncode not in (0, -15):
                print(f"{name} exited {process.returncode}; see {log}")
        self._processes.clear()

    def pids(self) -> dict[str, int]:
        """The process id of each running part (etcd, kube-apiserver, kube-controller-manager):
        setpriv execs the binary, so the id is the binary's own."""
        return {name: process.pid for name, process in self._processes}

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        # Killed with this process, however it ends: a test run stopped by a timeout or a
        # SIGKILL must not leave an API server and its etcd behind on a shared machine.
        guard = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
        process = subprocess.Popen(
            [*guard, str(BIN / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self._processes.append((name, process))

    def _wait(
        self,
        url: str,
        timeout: float,
        ready: object,
        *,
        auth: bool = False,
        verify: bool = True,
    ) -> None:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {self.admin_token}"} if auth else {}
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for name, process in self._processes:
                if process.poll() is not None:
                    tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
            try:
                request = urllib.request.Request(url, headers=headers)
                opener = context if url.startswith("https") else None
                with urllib.request.urlopen(request, timeout=2, context=opener) as answer:
                    body = answer.read()
                if callable(ready) and ready(body):
                    return
                last = body.decode(errors="replace")[:200]
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise RuntimeError(f"{url} not ready after {timeout:g} s: {last}")

    def _write_audit_policy(self) -> Path:
        # Every request a ServiceAccount outside kube-system makes, with its body (a delete's
        # preconditions are in it): what the harvester really asked, as the server saw it. The
        # controllers' own ServiceAccounts (kube-system) and everything else are left out.
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                {"level": "Request", "userGroups": ["system:serviceaccounts"]},
                {"level": "None"},
            ],
        }
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return path

    def _make_pki(self) -> None:
        pki = self.pki
        pki.mkdir(parents=True, exist_ok=True)
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
        _openssl("req", "-x509", "-new", "-nodes", "-key", "ca.key", "-subj", "/CN=test-ca",
                 "-days", "30", "-out", "ca.crt", cwd=pki)  # fmt: skip
        _openssl("genrsa", "-out", "apiserver.key", "2048", cwd=pki)
        _openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
                 "-out", "apiserver.csr", cwd=pki)  # fmt: skip
        (pki / "apiserver.ext").write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
        )
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "30", "-extfile", "apiserver.ext",
                 "-out", "apiserver.crt", cwd=pki)  # fmt: skip
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        (pki / "tokens.csv").write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')

    def _write_kubeconfig(self, path: Path, token: str, namespace: str) -> None:
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "local",
                    "context": {"cluster": "local", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(document))
