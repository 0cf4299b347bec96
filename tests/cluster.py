"""Several `rag serve` replicas behind a real nginx, scraped by a real Prometheus, on loopback.

The nginx proxy rules are the deployment's own (compose/nginx/rag-proxy.conf); only the
upstream list and the listening port differ from compose, where Docker's DNS names the
replicas. Used by tests/test_deployment.py and bench/scale.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PROXY_RULES = ROOT / "compose" / "nginx" / "rag-proxy.conf"


def missing_tools() -> list[str]:
    """The programs this harness needs that are not installed (make test installs them)."""
    return [tool for tool in ("nginx", "prometheus") if not _find(tool)]


def _find(tool: str) -> str | None:
    # Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout_s} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def nginx(workdir: Path, upstreams: Sequence[str]) -> Iterator[str]:
    """nginx balancing `upstreams` (host:port) with the deployment's proxy rules; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server {u} max_fails=2 fail_timeout=10s;" for u in upstreams)
    # As root, nginx would hand its workers to "nobody", who cannot write this temp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = workdir / "nginx.conf"
    config.write_text(
        f"""{user}
daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{
    worker_connections 256;
}}
http {{
    access_log {workdir / "access.log"};
    client_max_body_size 0;
{temp}
    upstream rag {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name 127.0.0.1 localhost;
        include {PROXY_RULES};
    }}
}}
"""
    )
    log = workdir / "nginx.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [_find("nginx") or "nginx", "-c", str(config), "-p", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/nginx-health", proc, workdir / "error.log", 20)
        yield url
    finally:
        _stop(proc)


@contextmanager
def prometheus(workdir: Path, targets: Sequence[str], interval_ms: int = 1000) -> Iterator[str]:
    """Prometheus scraping /metrics of `targets` (host:port) every `interval_ms`; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "prometheus.yml"
    listed = ", ".join(f'"{t}"' for t in targets)
    config.write_text(
        f"""global:
  scrape_interval: {interval_ms}ms
  scrape_timeout: {interval_ms}ms
scrape_configs:
  - job_name: rag
    metrics_path: /metrics
    static_configs:
      - targets: [{listed}]
"""
    )
    log = workdir / "prometheus.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                _find("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/-/ready", proc, log, 30)
        yield url
    finally:
        _stop(proc)


def query(prometheus_url: str, expr: str) -> list[dict[str, object]]:
    """The instant vector Prometheus returns for `expr`."""
    reply = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=5)
    reply.raise_for_status()
    return reply.json()["data"]["result"]


def target_health(prometheus_url: str) -> dict[str, str]:
    """{"host:port": "up" | "down" | "unknown"} of every scrape target."""
    reply = httpx.get(f"{prometheus_url}/api/v1/targets", timeout=5)
    reply.raise_for_status()
    active = reply.json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: t["health"] for t in active}


def route_requests(metrics_text: str, path: str) -> float:
    """Requests a replica counted for the route `path`, from its /metrics text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("rag_requests_total{") and f'path="{path}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
