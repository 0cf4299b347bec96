"""`rag ingest --ray ADDRESS`: parse and embed on a Ray cluster; plan and write stay here.

The driver plans exactly as a local ingest does (IngestRun.plan: hash every file, skip the
unchanged ones) and sends each remaining file's bytes to a pool of Ray actors, so workers need
not see the driver's filesystem. An actor loads the embedding model once; per file it parses
in a bounded child process (ingest/worker.py, as locally), chunks and embeds. Results come back
to the driver, which pools whole documents up to ingest.flush_chunks and commits them through
the store's single writer, as a local ingest does. The actors run the driver's own `rag` and
`ingest` packages (shipped as Ray py_modules), so both sides chunk with the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ingest
import rag
from ingest.chunker import Window, make_chunks
from ingest.discovery import Entry, read_regular
from ingest.parsers import ParsedDocument, parse_bytes
from ingest.pipeline import IngestRun, ParsedFile, embed_sorted
from ingest.worker import Limits, Outcome, run_isolated
from rag.config import EmbeddingSettings, IngestSettings
from rag.embed.embedder import load_embedder
from rag.errors import ClusterError, ConfigError, ParseError, UsageError

# Calls queued on each actor: the next file's bytes are there when it finishes one.
CALLS_PER_ACTOR = 2
# A head that does not accept a TCP connection in this long is not there (ray.init itself
# would retry for minutes and then exit the process).
CONNECT_TIMEOUT_S = 5.0
# Actors that cannot be placed (the cluster is busy or lacks the CPUs/GPUs asked for) stay
# pending forever; say so instead.
WORKERS_START_TIMEOUT_S = 300.0
# The Ray head's GCS port when an address gives none.
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


@dataclass
class RayCluster:
    """A connection to a Ray cluster and how to size the ingest actors on it."""

    address: str
    ray: Any  # the ray module, imported when connecting
    settings: IngestSettings
    # What the actors load; the driver loads the same, for the store and the chunk window.
    embedding: EmbeddingSettings

    def actor_count(self) -> int:
        if self.settings.ray_actors:
            return self.settings.ray_actors
        resources = self.ray.cluster_resources()
        count = int(resources.get("CPU", 0) // self.settings.ray_cpus_per_actor)
        if self.settings.ray_gpus_per_actor:
            count = min(count, int(resources.get("GPU", 0) // self.settings.ray_gpus_per_actor))
        return max(1, count)


@contextlib.contextmanager
def connect(
    address: str, settings: IngestSettings, embedding: EmbeddingSettings
) -> Iterator[RayCluster]:
    """Join the cluster at `address` ("auto", HOST:PORT or ray://HOST:PORT) as a driver."""
    try:
        import ray
    except ImportError as e:
        raise UsageError(
            "--ray needs Ray, which is not installed here: pip install 'rag[ray]'"
        ) from e
    _check_reachable(address)

    runtime_env = {
        # The workers import the driver's code, whatever is (or is not) installed there.
        "py_modules": [str(Path(ingest.__file__).parent), str(Path(rag.__file__).parent)],
        "excludes": ["__pycache__"],
        # Models come from packages or local dirs on the workers too; never from a hub.
        "env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }
    try:
        ray.init(
            address=address,
            runtime_env=runtime_env,
            namespace="rag-ingest",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (Exception, SystemExit) as e:  # ray raises many types here, SystemExit included
        raise ClusterError(
            f"--ray {address}: cannot join the Ray cluster: {_first_line(e)}; check that "
            "this machine runs the same Ray and Python versions as the cluster (`ray status`)"
        ) from e
    try:
        yield RayCluster(address, ray, settings, embedding)
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in seconds, naming --ray, where ray.init would hang for minutes."""
    host, port = _head_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        flag = "--ray-client-server-port" if address.startswith("ray://") else "--port"
        raise ClusterError(
            f"--ray {address}: no Ray head answers at {host}:{port} ({reason}); start one "
            f"there with `ray start --head {flag}={port}`, or give the address `ray status` "
            "shows on the head"
        ) from e


def _head_address(address: str) -> tuple[str, int]:
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except Exception as e:  # ConnectionError when none runs, ValueError for a bad env
            raise ClusterError(
                f"--ray auto: no Ray cluster runs on this machine and RAY_ADDRESS is not set "
                f"({_first_line(e)}); start one with `ray start --head`, or give "
                "--ray HOST:PORT"
            ) from e
        if not found:
            raise ClusterError("--ray auto found no Ray cluster; give --ray HOST:PORT")
        address = found
    rest = address.removeprefix("ray://")
    default_port = DEFAULT_CLIENT_PORT if address.startswith("ray://") else DEFAULT_GCS_PORT
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", str(default_port))
    if not host or not port.isdigit():
        raise UsageError(
            f"--ray {address}: give auto, HOST:PORT (the head's port, {DEFAULT_GCS_PORT} "
            f"unless `ray start --port` said otherwise) or ray://HOST:PORT (Ray Client)"
        )
    return host.strip("[]"), int(port)


class IngestWorker:
    """A Ray actor: holds the embedding model; parses, chunks and embeds one file per call."""

    def __init__(
        self, embedding: EmbeddingSettings, window: Window, limits: Limits, batch_size: int
    ) -> None:
        self.embedder = load_embedder(embedding)
        self.window = window
        self.limits = limits
        self.batch_size = batch_size

    def model(self) -> tuple[str, int, int]:
        return self.embedder.name, self.embedder.dim, self.embedder.max_input_tokens

    def process(self, key: int, path: str, data: bytes, doc_id: str, source: str) -> Outcome:
        """The file's outcome: (parsed without its sections, chunks, vectors), or a failure."""
        try:
            args = (Path(path), data, self.limits.budget, self.limits.ocr)
            parsed: ParsedDocument = run_isolated(parse_bytes, args, self.limits)
        except ParseError as e:
            return Outcome(key, None, e.reason, e.message)
        budget = self.limits.budget
        allowed, _ = budget.max_chunks(len(data))
        chunks = make_chunks(doc_id, source, parsed.sections, self.embedder, self.window, allowed)
        try:
            budget.check_chunks(path, len(chunks), len(data))
        except ParseError as e:
            return Outcome(key, None, e.reason, e.message)
        vectors = embed_sorted(self.embedder, [c.text for c in chunks], self.batch_size)
        # The driver needs the counts, not the text again: the chunks carry it.
        return Outcome(key, (dataclasses.replace(parsed, sections=[]), chunks, vectors))


def ingest_on_ray(run: IngestRun, files: list[Entry], cluster: RayCluster) -> None:
    """IngestRun.ingest, with parsing and embedding on the cluster's actors."""
    _RayIngest(run, cluster).ingest(files)


class _RayIngest:
    def __init__(self, run: IngestRun, cluster: RayCluster) -> None:
        self.run = run
        self.cluster = cluster
        self.ray = cluster.ray
        self.actors: list[Any] = []
        self.busy: list[int] = []  # calls in flight, per actor
        self.in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (file key, actor index)
        self.done: list[ParsedFile] = []
        self.vectors: list[np.ndarray] = []

    def ingest(self, files: list[Entry]) -> None:
        try:
            for key, entry in enumerate(files):
                job = self.run.plan(key, entry)
                if job is None:
                    continue
                if not self.actors:
                    self._start_actors()
                while len(self.in_flight) >= len(self.actors) * CALLS_PER_ACTOR:
                    self._collect()
                self._submit(key)
            while self.in_flight:
                self._collect()
            self._flush()
        finally:
            for actor in self.actors:
                self.ray.kill(actor)

    def _start_actors(self) -> None:
        settings = self.cluster.settings
        count = self.cluster.actor_count()
        remote = self.ray.remote(IngestWorker).options(
            num_cpus=settings.ray_cpus_per_actor,
            num_gpus=settings.ray_gpus_per_actor,
            # A worker lost mid-file (node gone, OOM kill) comes back and the file is retried
            # once; a file that kills it again is reported as crashed.
            max_restarts=2,
            max_task_retries=1,
        )
        run = self.run
        self.actors = [
            remote.remote(self.cluster.embedding, run.window, run.limits, run.batch_size)
            for _ in range(count)
        ]
        self.busy = [0] * count
        ready = [actor.model.remote() for actor in self.actors]
        try:
            models = self.ray.get(ready, timeout=WORKERS_START_TIMEOUT_S)
        except self.ray.exceptions.GetTimeoutError as e:
            raise ClusterError(
                f"--ray {self.cluster.address}: the cluster did not start {count} ingest "
                f"worker(s) of {settings.ray_cpus_per_actor:g} CPU and "
                f"{settings.ray_gpus_per_actor:g} GPU each in {WORKERS_START_TIMEOUT_S:g} s; "
                "is it busy, or short of those resources (ingest.ray_actors, "
                "ingest.ray_cpus_per_actor, ingest.ray_gpus_per_actor)?"
            ) from e
        except self.ray.exceptions.RayError as e:
            raise ClusterError(
                f"--ray {self.cluster.address}: the ingest workers could not load the "
                f"embedding model: {_first_line(e)}"
            ) from e
        local = (run.embedder.name, run.embedder.dim, run.embedder.max_input_tokens)
        for model in models:
            if tuple(model) != local:
                raise ConfigError(
                    f"the Ray workers' embedding model {model[0]} (dim {model[1]}) is not this "
                    f"machine's {local[0]} (dim {local[1]}); install the same model on both"
                )

    def _submit(self, key: int) -> None:
        job = self.run.jobs[key]
        try:
            data = read_regular(job.target, self.run.limits.max_file_bytes)
        except ParseError as e:
            self.run.jobs.pop(key)
            self.run.parse_failed(job, Outcome(key, None, e.reason, e.message))
            return
        index = min(range(len(self.actors)), key=self.busy.__getitem__)
        ref = self.actors[index].process.remote(key, str(job.path), data, job.doc_id, job.source)
        self.busy[index] += 1
        self.in_flight[ref] = (key, index)

    def _collect(self) -> None:
        ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
        for ref in ready:
            key, index = self.in_flight.pop(ref)
            self.busy[index] -= 1
            try:
                outcome: Outcome = self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                outcome = Outcome(key, None, "crashed", f"the Ray worker failed: {_first_line(e)}")
            self._take(outcome)

    def _take(self, outcome: Outcome) -> None:
        run = self.run
        job = run.jobs.pop(outcome.key)
        if outcome.failed:
            run.parse_failed(job, outcome)
            return
        parsed, chunks, vectors = outcome.value
        if run.accept(job, parsed, chunks) is None:
            return
        run.meter.chunks += len(chunks)
        run.meter.work_done += job.size_bytes
        run.meter.emit("embedding", job.source)
        self.done.append(ParsedFile(job, chunks, parsed.doc_hash, bool(parsed.ocr_failed)))
        self.vectors.append(vectors)
        if sum(len(d.chunks) for d in self.done) >= run.settings.flush_chunks:
            self._flush()

    def _flush(self) -> None:
        if not self.done:
            return
        docs, vectors = self.done, np.concatenate(self.vectors)
        self.done, self.vectors = [], []
        self.run.write(docs, vectors)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
