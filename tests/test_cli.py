"""`fracgpu-extender serve`: settings from flags, environment and file; wrong ones stop it at start; TLS and
mutual TLS actually serve."""

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import trustme

from extender.api import cli
from extender.api.app import create_app
from extender.api.settings import SettingsError, load_settings
from extender.api.static import StaticCluster


@pytest.mark.parametrize(
    "argv, message",
    [(["serve", "--policy", "fastest"], "policy: unknown policy 'fastest'"),
     (["serve", "--listen", "8888"], "listen: must be HOST:PORT"),
     (["serve", "--units-per-gpu", "0"], "units_per_gpu"),
     (["serve", "--reserve-percent", "120"], "reserve_percent"),
     (["serve", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], "tls_cert: file /nonexistent.crt does not exist"),
     (["serve", "--cluster", "/nonexistent.yaml"], "cluster: file /nonexistent.yaml does not exist"),
     (["serve", "--config", "/nonexistent-config.yaml"], "config file /nonexistent-config.yaml: cannot read")],
)
def test_bad_settings_stop_the_process_naming_the_setting(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_corrupt_cluster_file_is_reported(tmp_path, capsys):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("kind: List\nitems:\n- kind: Deployment\n")
    assert cli.main(["serve", "--cluster", str(bad)]) == 2
    assert "items[0] is 'Deployment', expected Node or Pod" in capsys.readouterr().err


def test_precedence_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("policy: spread\nreserve-mib: 100\nseed: 3\n")
    settings = load_settings(config_file=config, env={"FRACGPU_POLICY": "best-fit", "FRACGPU_RESERVE_MIB": "200"},
                             flags={"reserve_mib": 300})
    assert (settings.policy, settings.reserve_mib, settings.seed) == ("best-fit", 300, 3)
    config.write_text("polcy: spread\n")
    with pytest.raises(SettingsError, match="polcy: Extra inputs are not permitted"):
        load_settings(config_file=config, env={})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("fracgpu-scheduler")
    folder = tmp_path_factory.mktemp("pki")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


async def _get(url, ca, client_pem=None):
    context = ssl.create_default_context(cafile=str(ca))
    if client_pem is not None:
        context.load_cert_chain(str(client_pem))
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=context) as response:
            return response.status


async def test_https_and_mutual_tls(aiohttp_server, pki):
    settings = load_settings(env={}, flags={"tls_cert": pki["cert"], "tls_key": pki["key"], "tls_client_ca": pki["ca"]})
    server = await aiohttp_server(create_app(settings, source=StaticCluster([], [])), ssl=cli.ssl_context(settings))
    url = f"https://127.0.0.1:{server.port}/healthz"
    assert await _get(url, pki["ca"], pki["client"]) == 200
    with pytest.raises(aiohttp.ClientError):
        await _get(url, pki["ca"])  # no client certificate: refused


async def test_with_mutual_tls_the_probes_answer_on_their_own_plain_listener(aiohttp_server, pki):
    from testbed.controlplane import free_port

    probe = f"127.0.0.1:{free_port()}"
    settings = load_settings(env={}, flags={"tls_cert": pki["cert"], "tls_key": pki["key"],
                                            "tls_client_ca": pki["ca"], "probe_listen": probe})
    server = await aiohttp_server(create_app(settings, source=StaticCluster([], [])), ssl=cli.ssl_context(settings))
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics"):  # kubelet's probes and a scrape: no client certificate
            async with session.get(f"http://{probe}{path}") as response:
                assert response.status == 200, path
        async with session.post(f"http://{probe}/filter", json={}) as response:
            assert response.status in (404, 405)  # the verbs stay behind mutual TLS
    with pytest.raises(aiohttp.ClientError):
        await _get(f"https://127.0.0.1:{server.port}/healthz", pki["ca"])
    with pytest.raises(SettingsError, match="probe_listen must be another address"):
        load_settings(env={}, flags={"probe_listen": "127.0.0.1:8888"})


async def test_the_admission_webhook_has_its_own_https_listener(aiohttp_server, pki):
    from testbed.controlplane import free_port

    admission = f"127.0.0.1:{free_port()}"
    settings = load_settings(env={}, flags={"admission_listen": admission, "admission_tls_cert": pki["cert"],
                                            "admission_tls_key": pki["key"]})
    await aiohttp_server(create_app(settings, source=StaticCluster([], [])))
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "r", "operation": "CREATE", "object": {"metadata": {"name": "p"}, "spec": {}},
                          "userInfo": {"username": "someone"}}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://{admission}/admit/pods", json=review, ssl=context) as response:
            assert response.status == 200 and (await response.json())["response"]["allowed"] is True
        async with session.post(f"https://{admission}/filter", json={}, ssl=context) as response:
            assert response.status in (404, 405)  # only the webhook there
        with pytest.raises(aiohttp.ClientError):
            await session.post(f"http://{admission}/admit/pods", json=review)  # HTTPS only
    with pytest.raises(SettingsError, match="must be given together"):
        load_settings(env={}, flags={"admission_listen": admission})


@contextlib.contextmanager
def serving(*flags):
    """``fracgpu-extender serve`` in a process of its own, as it is run: yields (its port, its process) once it
    accepts connections; stopped with SIGTERM."""
    from testbed.controlplane import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "extender.api.cli", "serve", "--listen", f"127.0.0.1:{port}",
                                *map(str, flags)], cwd=Path(__file__).parent.parent, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "the extender did not listen within 30 s"
            time.sleep(0.05)
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def _until_ready(port):
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(urllib.error.URLError):
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                return
        assert time.monotonic() < deadline, "not ready within 30 s"
        time.sleep(0.05)


def _cluster_file(tmp_path, pods=()):
    from extender.testing.factories import gpu_node

    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "items": [gpu_node("a", gpus=1) | {"kind": "Node"}, *pods]}))
    return path


def test_the_cli_logs_one_line_per_record_whatever_a_name_carries(tmp_path):
    from extender.testing.factories import gpu_pod

    forged = "2026-12-07 00:00:00,000 INFO fracgpu.extender forged"
    pod = gpu_pod(f"evil\n{forged}", units=10) | {"kind": "Pod"}
    pod["spec"]["nodeName"] = "a"
    pod["metadata"]["annotations"]["fracgpu.io/assignment"] = "{"  # a warning naming the pod at start
    with serving("--cluster", _cluster_file(tmp_path, [pod])) as (port, process):
        _until_ready(port)  # the feed has been read, and its warnings written
    lines = process.stderr.read().splitlines()
    warning = [line for line in lines if "annotation fracgpu.io/assignment" in line]
    assert len(warning) == 1 and f"pod default/evil\\n{forged}: annotation" in warning[0], lines
    assert not [line for line in lines if line.startswith(forged)], lines  # no line forged by the name


def _closed_by_the_server(sock, within):
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _https_get(port, context, path="/healthz") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return tls.recv(100)


def test_a_tls_handshake_never_finished_is_closed_after_the_idle_timeout(tmp_path, pki):
    with serving("--cluster", _cluster_file(tmp_path), "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                 "--tls-client-ca", pki["ca"], "--idle-timeout-s", "0.5") as (port, _):
        silent = socket.create_connection(("127.0.0.1", port))  # never a ClientHello
        begun = socket.create_connection(("127.0.0.1", port))
        begun.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello begun, never finished
        with silent, begun:
            assert _closed_by_the_server(silent, 5) and _closed_by_the_server(begun, 5)  # not asyncio's 60 s
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        try:
            refused = _https_get(port, context)  # mutual TLS: no client certificate, no answer
        except (ssl.SSLError, ConnectionError) as exc:
            refused = repr(exc).encode()
        assert not refused.startswith(b"HTTP"), refused
        context.load_cert_chain(str(pki["client"]))
        assert _https_get(port, context).startswith(b"HTTP/1.1 200")


async def test_the_probe_and_admission_listeners_have_a_connection_limit_too(aiohttp_server, pki):
    from test_hostile import connect
    from testbed.controlplane import free_port

    probe, admission = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    settings = load_settings(env={}, flags={"probe_listen": probe, "admission_listen": admission, "max_connections": 2,
                                            "admission_tls_cert": pki["cert"], "admission_tls_key": pki["key"]})
    assert settings.side_max_connections == 2
    await aiohttp_server(create_app(settings, source=StaticCluster([], [])))
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    for address, url in ((probe, f"http://{probe}/healthz"), (admission, f"https://{admission}/healthz")):
        held = [await connect(int(address.rpartition(":")[2])) for _ in range(5)]  # idle, or no TLS handshake
        try:
            closed = asyncio.gather(*(reader.read(1) for reader, _ in held[:3]))
            assert await asyncio.wait_for(closed, 5) == [b""] * 3, address  # the oldest made room; idle timeout 120 s
            async with aiohttp.ClientSession() as session:
                async with session.get(url, ssl=context) as response:
                    assert response.status == 200, address
        finally:
            for _, writer in held:
                writer.close()
