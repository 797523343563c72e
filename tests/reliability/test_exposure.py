"""Exposure of the embedded Ray (`mien annotate` without --address): nothing listens beyond
loopback, there is no dashboard or job server, and token auth stays on."""

from __future__ import annotations

import http.client
import ipaddress
import os
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(180)


def _listening(procs) -> set[tuple[str, str, int]]:
    import psutil

    out = set()
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((p.name(), c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return out


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _http_status(url: str) -> int | None:
    """HTTP status of a GET without credentials; None when the port does not speak HTTP/1."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None


def test_embedded_ray_binds_loopback_only_and_keeps_token_auth():
    import grpc
    import psutil
    import ray
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    from workflows.core.cluster import init_ray

    assert not ray.is_initialized()
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    init_ray(None, num_cpus=1)
    try:
        assert ray.get(ray.remote(lambda: 1).remote()) == 1  # the loopback cluster runs work
        me = psutil.Process()
        ray_procs = me.children(recursive=True)
        sockets = _listening([me, *ray_procs])
        names = {n for n, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        exposed = sorted(s for s in sockets if not _is_loopback(s[1]))
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        # No dashboard, hence no job server.
        assert not ray._private.worker._global_node.address_info.get("webui_url")

        # Token auth: GCS refuses a client without the token, accepts it with.
        assert os.environ.get("RAY_AUTH_MODE") == "token"
        gcs = ray.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:")
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs))
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        header = AuthenticationTokenLoader.instance().get_token_for_http_header()
        reply = stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10,
                                    metadata=tuple(header.items()))
        assert len(reply.node_info_list) == 1
        # The per-node job agent (what a job server talks to) wants the token too. It has no HTTP
        # port when another Ray on the host holds 52365; the Prometheus port answers anyone
        # (loopback-only, as checked above).
        node = ray.nodes()[0]
        agent_ports = [port for name, _, port in sockets
                       if name == "ray::DashboardAgent" and port != node["MetricsExportPort"]]
        answers = {port: _http_status(f"http://127.0.0.1:{port}/api/job_agent/jobs/") for port in agent_ports}
        http_ports = {port: a for port, a in answers.items() if a is not None}  # the others speak gRPC
        listen = node.get("DashboardAgentListenPort") or -1
        # Its one HTTP port refuses a request without the token; -1: it has none (52365 was taken).
        assert http_ports == ({listen: 401} if listen > 0 else {}), answers
    finally:
        ray.shutdown()
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before
