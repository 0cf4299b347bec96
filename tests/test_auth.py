"""API keys: hashed at rest, scoped to collections on every route, rate-limited."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.accounts.apikeys import add_key, find_key, load_keys, remove_key

from .conftest import RAG, ROOT, rag_env, start_server, stop_server


def test_keys_are_stored_as_hashes_and_found_by_token(tmp_path: Path) -> None:
    token = add_key(tmp_path, "team", ["alpha"])
    stored = (tmp_path / "keys.json").read_text()
    assert token not in stored
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    keys = load_keys(tmp_path)
    assert find_key(keys, token).name == "team"
    assert find_key(keys, token + "x") is None
    remove_key(tmp_path, "team")
    assert load_keys(tmp_path) == []


@pytest.fixture(scope="module")
def keyed(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A copy of the sample index plus collection `other`, served with three keys."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    shutil.copytree(sample_data_dir, data, ignore=shutil.ignore_patterns("*.log", "*.lock"))
    other = data.parent / "other.md"
    other.write_text("# Other\nThe other team's secret project is called Bluefin.\n")
    subprocess.run(
        [str(RAG), "ingest", str(other), "--collection", "other"],
        cwd=ROOT,
        env=rag_env(data),
        check=True,
        capture_output=True,
        timeout=300,
    )
    tokens = {
        "a": add_key(data, "team-a", ["default"]),
        "b": add_key(data, "team-b", ["other"]),
        "c": add_key(data, "team-c", ["*"]),
    }
    proc, base = start_server(data, RAG_SERVER_RATE_LIMIT_PER_MIN="6")
    try:
        yield {"base": base, **tokens}
    finally:
        stop_server(proc)


def _get(keyed: dict, path: str, who: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {keyed[who]}"} if who else {}
    return httpx.get(keyed["base"] + path, headers=headers, timeout=60)


def _post(keyed: dict, path: str, body: dict, who: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {keyed[who]}"} if who else {}
    return httpx.post(keyed["base"] + path, json=body, headers=headers, timeout=60)


def test_every_model_route_needs_a_key(keyed: dict) -> None:
    assert _get(keyed, "/health", None).status_code == 200
    assert _get(keyed, "/ready", None).json()["auth"] is True
    assert _get(keyed, "/v1/models", None).status_code == 401
    assert _post(keyed, "/api/search", {"query": "vacation"}, None).status_code == 401
    wrong = httpx.post(
        keyed["base"] + "/api/ask",
        json={"question": "x"},
        headers={"authorization": "Bearer rag_not-a-key"},
        timeout=60,
    )
    assert wrong.status_code == 401
    assert "API key" in wrong.json()["error"]["message"]


def test_a_key_for_one_collection_never_sees_another(keyed: dict) -> None:
    mine = {"query": "secret project", "collection": "other"}
    hits = _post(keyed, "/api/search", mine, "b").json()["hits"]
    assert hits and all("Bluefin" in h["text"] for h in hits)
    for body in ({"query": "vacation"}, {"query": "vacation", "collection": "default"}):
        denied = _post(keyed, "/api/search", body, "b")
        assert denied.status_code == 403
    assert _post(keyed, "/api/ask", {"question": "vacation?"}, "b").status_code == 403
    models = {m["id"] for m in _get(keyed, "/v1/models", "b").json()["data"]}
    assert "other" in models and "default" not in models
    chat = {"model": "default", "messages": [{"role": "user", "content": "vacation?"}]}
    # The same 403 as the REST routes: outside the key's scope, existing or not.
    assert _post(keyed, "/v1/chat/completions", chat, "b").status_code == 403
    # Team A sees its own collection and nothing of B's.
    hits = _post(keyed, "/api/search", {"query": "secret project"}, "a").json()["hits"]
    assert hits and not any("Bluefin" in h["text"] for h in hits)
    assert (
        _post(keyed, "/api/search", {"query": "x", "collection": "other"}, "a").status_code == 403
    )


def test_requests_beyond_the_rate_get_429(keyed: dict) -> None:
    statuses = [_post(keyed, "/api/search", {"query": "badge"}, "c").status_code for _ in range(8)]
    assert statuses[:6] == [200] * 6
    assert 429 in statuses[6:]


def test_serve_refuses_a_network_address_without_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        env=rag_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "without API keys" in done.stderr


def test_keys_cli_shows_a_key_once_and_lists_names_only(tmp_path: Path) -> None:
    def rag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RAG), "keys", *args],
            cwd=ROOT,
            env=rag_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )

    token = rag("add", "ops", "-c", "default").stdout.strip()
    assert token.startswith("rag_")
    listed = rag("list").stdout
    assert "ops\tdefault" in listed and token not in listed
    assert json.loads((tmp_path / "keys.json").read_text())["keys"][0]["name"] == "ops"
    assert rag("rm", "ops").returncode == 0
    assert rag("rm", "ops").returncode == 1
