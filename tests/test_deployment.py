"""The deployment: replicas on one index behind real nginx and Prometheus; compose files valid."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from rag.config import load_settings

from .cluster import (
    missing_tools,
    nginx,
    prometheus,
    query,
    route_requests,
    target_health,
)
from .conftest import FAST_LLM_ENV, ROOT, start_server, stop_server

COMPOSE = ROOT / "compose"
SEARCH = {"query": "Which command promotes the standby database?", "k": 2}


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.25)


@pytest.mark.slow
def test_two_replicas_on_one_index_behind_nginx_with_prometheus(
    sample_data_dir: Path, tmp_path: Path
) -> None:
    if missing_tools():
        pytest.skip(f"not installed: {missing_tools()} (make test installs them)")
    first, first_url = start_server(sample_data_dir, **FAST_LLM_ENV)
    second, second_url = start_server(sample_data_dir, **FAST_LLM_ENV)
    replicas = [u.removeprefix("http://") for u in (first_url, second_url)]
    try:
        with (
            nginx(tmp_path / "nginx", replicas) as lb,
            prometheus(tmp_path / "prometheus", replicas) as prom,
        ):
            for _ in range(8):
                reply = httpx.post(f"{lb}/api/search", json=SEARCH, timeout=30)
                assert reply.status_code == 200, reply.text
                assert reply.json()["hits"][0]["source"] == "samples/incident-runbook.pdf"
            # Round robin: both replicas answered some of them.
            for url in (first_url, second_url):
                counted = route_requests(httpx.get(f"{url}/metrics").text, "/api/search")
                assert counted >= 2, url
            models = httpx.get(f"{lb}/v1/models").json()["data"]
            llm = next(m["id"] for m in models if m["id"].startswith("smollm2"))
            chat = httpx.post(
                f"{lb}/v1/chat/completions",
                json={
                    "model": llm,
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 3,
                },
                timeout=120,
            )
            assert chat.status_code == 200, chat.text
            assert chat.json()["usage"]["completion_tokens"] > 0

            _wait_for(lambda: set(target_health(prom).values()) == {"up"})
            assert sorted(target_health(prom)) == sorted(replicas)
            _wait_for(lambda: len(query(prom, 'rag_requests_total{path="/api/search"}')) >= 2)
            _wait_for(lambda: query(prom, 'sum(rag_tokens_total{direction="completion"})') != [])
            tokens = query(prom, 'sum(rag_tokens_total{direction="completion"})')
            assert float(tokens[0]["value"][1]) > 0  # type: ignore[index]

            # One replica stops: nginx sends everything to the other, and nothing fails.
            stop_server(first)
            for _ in range(6):
                reply = httpx.post(f"{lb}/api/search", json=SEARCH, timeout=30)
                assert reply.status_code == 200, reply.text
            _wait_for(lambda: "down" in target_health(prom).values())
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                stop_server(proc)


def _compose_environment(variables: dict[str, str] | None = None) -> dict[str, str]:
    """Every RAG_* variable the compose files set for the rag services, as compose would
    substitute `${NAME:-default}` from `variables` (the shell's, in a real deployment)."""
    import re

    import yaml

    given = variables or {}

    def substitute(value: str) -> str:
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: given.get(m.group(1), m.group(2)), value)

    env: dict[str, str] = {}
    for name in ("compose.yaml", "compose.cuda.yaml"):
        services = yaml.safe_load((COMPOSE / name).read_text())["services"]
        for service in ("rag", "ingest"):
            for key, value in (services.get(service, {}).get("environment") or {}).items():
                if key.startswith("RAG_"):
                    env[key] = substitute(str(value))
    return env


def test_the_shared_storage_profile_sets_real_settings() -> None:
    """With RAG_STORAGE_URI exported (docs/deployment.md: shared storage) the replicas use minio."""
    env = _compose_environment({"RAG_STORAGE_URI": "s3://rag/index"})
    storage = load_settings(ROOT / "config.toml", env=env).storage
    assert (storage.uri, storage.s3_endpoint, storage.s3_allow_http) == (
        "s3://rag/index",
        "http://minio:9000",
        True,
    )
    assert load_settings(ROOT / "config.toml", env=_compose_environment()).storage.uri == ""


def test_every_setting_the_deployment_sets_exists() -> None:
    import dockerfile

    env = _compose_environment()
    for command in dockerfile.parse_file(str(COMPOSE / "Dockerfile")):
        if command.cmd == "ENV":
            pairs = dict(zip(command.value[::2], command.value[1::2], strict=True))
            env.update({k: v for k, v in pairs.items() if k.startswith("RAG_")})
        # COPY --from takes files from a build stage, not from the repository.
        if command.cmd == "COPY" and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert {"RAG_STORAGE_DATA_DIR", "RAG_EMBEDDING_BACKEND"} <= set(env)
    # Unknown keys and bad values are errors in load_settings, as they would be in a replica.
    settings = load_settings(ROOT / "config.toml", env=env)
    assert settings.server.host == "0.0.0.0"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="make test installs docker-compose")
@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.cuda.yaml"]])
def test_compose_files_pass_the_compose_schema(files: list[str]) -> None:
    args = [a for f in files for a in ("-f", f)]
    done = subprocess.run(
        ["docker-compose", *args, "config", "-q"],
        cwd=COMPOSE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="make test installs prometheus")
def test_prometheus_config_is_valid() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", str(COMPOSE / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_charts_only_metrics_the_service_exports(server: str) -> None:
    exported = set()
    for line in httpx.get(f"{server}/metrics").text.splitlines():
        if line.startswith("# TYPE "):
            exported.add(line.split()[2])
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "rag.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\brag_[a-z_]+", target["expr"])
    }
    assert charted
    # A histogram's series (_bucket) exist once it is declared, before any observation.
    missing = {
        n for n in charted if n not in exported and n.removesuffix("_bucket") not in exported
    }
    assert not missing, f"the dashboard charts metrics /metrics does not export: {missing}"
