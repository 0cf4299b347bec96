"""storage.uri = s3://…: one index in an object store, several readers, exactly one writer.

The server is moto's standalone server (`python -m moto.server`, from `moto[server]` on
PyPI), run as its own process on a loopback port: a real HTTP S3 API that LanceDB's Rust
object_store client and boto3 talk to over TCP, as they would to AWS or MinIO. It honours
conditional PUTs (If-None-Match: *, If-Match), which Lance's commits and our writer lease
rely on, and with INITIAL_NO_AUTH_ACTION_COUNT it checks access keys and signatures after
the first few calls, so bad credentials are refused for real. MinIO, the server a
deployment would run (compose/), is neither in PyPI nor in Debian here; no fake of our own
code is involved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from rag.config import StorageSettings
from rag.index.location import index_location
from rag.index.store import open_index
from rag.index.writelock import write_lock

from .conftest import RAG, ROOT, free_port, rag_env

BUCKET = "rag-shared"
LEASE_S = "3"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str

    def storage(self, data_dir: Path, prefix: str) -> StorageSettings:
        return StorageSettings(
            data_dir=str(data_dir),
            uri=f"s3://{BUCKET}/{prefix}",
            s3_endpoint=self.endpoint,
            s3_allow_http=True,
            lease_s=float(LEASE_S),
        )

    def env(self, data_dir: Path, prefix: str, **extra: str) -> dict[str, str]:
        """A `rag` subprocess on its own "machine" (data dir) sharing the bucket's index."""
        env = rag_env(
            data_dir,
            RAG_STORAGE_URI=f"s3://{BUCKET}/{prefix}",
            RAG_STORAGE_S3_ENDPOINT=self.endpoint,
            RAG_STORAGE_S3_ALLOW_HTTP="true",
            RAG_STORAGE_LEASE_S=LEASE_S,
        )
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret})
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    # After 4 unauthenticated calls (the IAM user, its key, its policy, the bucket) every
    # request must be signed with a key the server issued.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        boot = {"aws_access_key_id": "boot", "aws_secret_access_key": "boot"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **boot)
        iam.create_user(UserName="rag")
        key = iam.create_access_key(UserName="rag")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*"}]}
        policy["Statement"][0]["Resource"] = "*"
        iam.put_user_policy(UserName="rag", PolicyName="s3", PolicyDocument=json.dumps(policy))
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        ).create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def keys(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The access keys in this process's environment, the only place rag reads them from."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    return s3


def _rag(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RAG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_ingest_into_s3_then_replicas_on_other_machines_read_the_same_chunks(
    keys: S3Server, tmp_path: Path
) -> None:
    writer, replica, other = tmp_path / "writer", tmp_path / "replica", tmp_path / "other"
    done = _rag(keys.env(writer, "shared"), "ingest", "samples/", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["added"], report["failed"]) == (4, [])
    assert not (writer / "lancedb").exists(), "the index went to the data dir, not the bucket"

    # Two readers, each with a data dir of its own (two machines), see the same chunks, and
    # vector and full-text search work on the bucket.
    store = open_index(keys.storage(other, "shared"), None, 0)
    docs = store.documents("default")
    assert len(docs) == 4 and sum(d.chunks for d in docs.values()) == report["chunks"]
    second = open_index(keys.storage(replica, "shared"), None, 0)
    assert second.documents("default") == docs
    rows = [r for batch in second.scan(["chunk_id", "vector", "text"]) for r in batch]
    assert len(rows) == report["chunks"]
    probe = rows[len(rows) // 2]
    nearest = store.search("default", np.asarray(probe["vector"], dtype=np.float32), 1)
    assert nearest[0].chunk_id == probe["chunk_id"] and nearest[0].score > 0.99
    words = " ".join(probe["text"].split()[:6])
    assert probe["chunk_id"] in {p.chunk_id for p in second.text_search("default", words, 5)}

    # Another machine re-ingests the same files: nothing changed, nothing written.
    version = store.table_version()
    again = _rag(keys.env(replica, "shared"), "ingest", "samples/", "--json")
    assert again.returncode == 0, again.stderr
    assert (json.loads(again.stdout)["unchanged"], json.loads(again.stdout)["added"]) == (4, 0)
    assert store.table_version() == version

    # Maintenance and backup work on the bucket; restore refuses with the setting named.
    maintained = _rag(keys.env(other, "shared"), "maintain", "--now", "--json")
    assert maintained.returncode == 0, maintained.stderr
    maintenance = json.loads(maintained.stdout)
    assert maintenance["ran"] and maintenance["rows"] == report["chunks"]
    assert maintenance["bytes_after"] > 0
    backed = _rag(keys.env(other, "shared"), "backup", str(tmp_path / "bak"), "--json")
    assert backed.returncode == 0, backed.stderr
    assert json.loads(backed.stdout)["rows"] == report["chunks"]
    restored = _rag(keys.env(other, "shared"), "restore", str(tmp_path / "bak"))
    assert restored.returncode == 2 and "storage.uri" in restored.stderr
    assert "Traceback" not in restored.stderr


def test_a_second_writer_on_another_machine_waits_for_the_lease_or_gives_up(
    keys: S3Server, tmp_path: Path
) -> None:
    storage = keys.storage(tmp_path / "holder", "lease")
    location = index_location(storage)
    with write_lock(storage.data_path, 0, location=location, lease_s=storage.lease_s) as hold:
        refused = _rag(
            keys.env(tmp_path / "second", "lease", RAG_STORAGE_LOCK_WAIT_S="0"),
            "ingest",
            "samples/",
        )
        assert refused.returncode == 1
        assert f"is being written by {socket.gethostname()} pid {os.getpid()}" in refused.stderr
        assert "storage.lock_wait_s" in refused.stderr and "Traceback" not in refused.stderr

        # A writer that loads no model: `rag docs rm` takes the lease before it looks.
        waiting = subprocess.Popen(
            [str(RAG), "docs", "rm", "gone.md"],
            cwd=ROOT,
            env=keys.env(tmp_path / "third", "lease", RAG_STORAGE_LOCK_WAIT_S="60"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Held past several refreshes: the waiter must not take a live holder's lease.
        time.sleep(float(LEASE_S) * 1.5)
        hold.check()
        assert waiting.poll() is None
    _, err = waiting.communicate(timeout=120)
    assert "waiting for the index writer lease" in err and "took over" not in err
    assert waiting.returncode == 1 and "not in collection 'default': gone.md" in err, err


def test_a_killed_writers_lease_is_taken_over_after_lease_s(keys: S3Server, tmp_path: Path) -> None:
    storage = keys.storage(tmp_path / "dead", "takeover")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from rag.config import StorageSettings\n"
            "from rag.index.location import index_location\n"
            "from rag.index.writelock import write_lock\n"
            f"s = StorageSettings(**{msgspec.structs.asdict(storage)!r})\n"
            "with write_lock(s.data_path, 0, location=index_location(s), lease_s=s.lease_s):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(300)\n",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)  # no release: the lease stays in the bucket
        holder.wait()
    said: list[str] = []
    started = time.monotonic()
    location = index_location(storage)
    with write_lock(storage.data_path, 30, said.append, location=location, lease_s=3.0) as hold:
        hold.check()
        waited_s = time.monotonic() - started
    assert any("took over the writer lease" in s for s in said), said
    assert storage.lease_s <= waited_s < storage.lease_s * 3


def test_bad_keys_and_an_unreachable_store_are_one_line_errors(
    s3: S3Server, tmp_path: Path
) -> None:
    bad = s3.env(tmp_path, "errors", AWS_SECRET_ACCESS_KEY="wrong")
    for args in (["docs", "list"], ["ingest", "samples/"]):
        done = _rag(bad, *args)
        assert done.returncode == 1, done.stderr
        assert "refused the credentials" in done.stderr and "AWS_ACCESS_KEY_ID" in done.stderr
        assert "Traceback" not in done.stderr and "wrong" not in done.stderr

    closed = f"http://127.0.0.1:{free_port()}"
    done = _rag(s3.env(tmp_path, "errors", RAG_STORAGE_S3_ENDPOINT=closed), "docs", "list")
    assert done.returncode == 1, done.stderr
    assert "cannot reach the object store" in done.stderr and closed in done.stderr
    assert "Traceback" not in done.stderr

    done = _rag(s3.env(tmp_path, "errors", RAG_STORAGE_URI="gs://elsewhere"), "docs", "list")
    assert done.returncode == 2 and "storage.uri" in done.stderr
