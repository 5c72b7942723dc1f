"""A local cluster started by the apps listens on the loopback interface only: Ray's gRPC servers, its three
Prometheus `/metrics` exporters (dashboard head, autoscaler, node agent), the agents and Serve's HTTP proxy.

The cluster runs in a process of its own (the test session's shared cluster is already up), and the listening
sockets of that process and its descendants are read from /proc, as `ss -ltnp` would."""

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from apps.config import free_port
from benchmarks.processes import descendants

ROOT = Path(__file__).resolve().parents[2]

CLUSTER = """
import sys
from ray import serve
from actors.cluster import ray_cluster
from core.config import ClusterConfig

with ray_cluster(ClusterConfig(num_cpus=2, object_store_memory_mb=128)):
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    print("READY", flush=True)
    sys.stdin.readline()
    serve.shutdown()
"""


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes[link[8:-1]] = pid
    return inodes


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_ip)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_sockets(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes = _socket_inodes(pids)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                hex_ip, hex_port = local.split(":")
                name = Path(f"/proc/{inodes[inode]}/cmdline").read_bytes().split(b"\0")[0].decode()[:60]
                found.append((str(_address(hex_ip)), int(hex_port, 16), name))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_a_local_cluster_listens_on_loopback_only():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        sockets = listening_sockets(descendants(proc.pid))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    ports = {p for _, p, _ in sockets}
    # The cluster is really up and the listing sees it: Serve's proxy and Ray's own servers are among the listeners.
    assert port in ports and len(ports) >= 8, sorted(sockets)
    open_to_network = [s for s in sockets if not _loopback(s[0])]
    assert not open_to_network, f"listening beyond the loopback interface: {open_to_network}"
