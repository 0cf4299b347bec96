"""Settings: one frozen dataclass per `config.toml` section, loaded explicitly and passed around.

Precedence: command-line flag > environment (`RAG_<SECTION>_<KEY>`) > config file > default.
The config file is `$RAG_CONFIG` when set, else `~/.config/rag/config.toml` when it exists.
Unknown sections, keys and environment variables are errors, so a typo never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import ConfigError

USER_CONFIG_PATH = Path("~/.config/rag/config.toml")
# llm.engine: "auto" picks mlx or llamacpp for this machine (rag.enginechoice).
ENGINES = ("auto", "mlx", "llamacpp", "openai")


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = "~/.local/share/rag"
    collection: str = "default"
    lock_wait_s: float = 600.0
    keep_versions_s: float = 86400.0
    keep_originals: bool = True
    uri: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_allow_http: bool = False
    lease_s: float = 30.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def remote(self) -> bool:
        """Whether the index lives in an object store rather than under data_dir."""
        return bool(self.uri.strip())


@dataclass(frozen=True)
class EmbeddingSettings:
    model: str = "bundled"
    device: str = "auto"
    batch_size: int = 32
    backend: str = "torch"
    cache_dir: str = "~/.cache/rag"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


@dataclass(frozen=True)
class ChunkingSettings:
    chunk_tokens: int = 180
    overlap_tokens: int = 30


@dataclass(frozen=True)
class IngestSettings:
    parse_timeout_s: float = 120.0
    parse_memory_mb: int = 2048
    max_file_mb: int = 256
    parse_workers: int = 1
    flush_chunks: int = 512
    max_text_chars_per_page: int = 100_000
    max_chunks_per_file: int = 50_000
    max_chunks_per_kib: int = 64
    ray_actors: int = 0
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0


@dataclass(frozen=True)
class RetrievalSettings:
    k: int = 4
    mode: str = "hybrid"
    candidates: int = 50
    text_weight: float = 0.3
    keyword_text_weight: float = 0.6
    max_per_document: int = 3
    min_score: float = 0.55
    word_weight: float = 0.4
    rerank: str = "none"
    rerank_top: int = 4
    rewrite: str = "rules"
    vector_index_rows: int = 50000


@dataclass(frozen=True)
class LlmSettings:
    engine: str = "auto"
    model: str = "auto"
    context_tokens: int = 2048
    answer_tokens: int = 160
    temperature: float = 0.0
    kv_bits: int = 0
    concurrency: int = 4
    stop: str = ""
    cpu_threads: int = 0
    base_url: str = ""
    served_model: str = ""
    api_key_env: str = "LLM_API_KEY"
    connect_timeout_s: float = 10.0
    # What llm.model = "auto" asks of a model besides fitting (rag.modelchoice).
    typical_prompt_tokens: int = 1000
    target_ttft_s: float = 20.0
    target_tokens_per_s: float = 5.0
    cache_dir: str = "~/.cache/rag/models"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 8
    request_timeout_s: float = 300.0
    allowed_hosts: str = "localhost,127.0.0.1,[::1]"
    cors_origins: str = ""
    rate_limit_per_min: int = 120
    upload_max_file_mb: int = 64
    upload_max_files: int = 32
    upload_max_request_mb: int = 256
    max_ingest_jobs: int = 8
    metrics_token: str = ""

    @property
    def allowed_host_list(self) -> list[str]:
        """Host header values to accept: each name bare and with the service's port."""
        hosts = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        # The address the service binds to always names it (unless that is a wildcard).
        if self.host not in ("0.0.0.0", "::") and self.host not in hosts:
            hosts.append(f"[{self.host}]" if ":" in self.host else self.host)
        return [*hosts, *(f"{h}:{self.port}" for h in hosts if h != "*")]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]


@dataclass(frozen=True)
class HardwareSettings:
    memory_limit_gb: float = 0.0
    os_headroom_gb: float = 4.0
    memory_bandwidth_gb_s: float = 0.0
    speed_cache_dir: str = "~/.cache/rag"

    @property
    def speed_cache_path(self) -> Path:
        return Path(self.speed_cache_dir).expanduser()


@dataclass(frozen=True)
class DoctorSettings:
    min_free_disk_gb: float = 5.0


@dataclass(frozen=True)
class MaintenanceSettings:
    interval_h: float = 24.0


@dataclass(frozen=True)
class CostSettings:
    currency: str = "USD"
    hardware_price: float = 0.0
    amortization_months: float = 36.0
    power_w: float = 0.0
    electricity_per_kwh: float = 0.0
    cloud_input_per_mtok: float = 0.15
    cloud_output_per_mtok: float = 0.6


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = field(default_factory=ChunkingSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    hardware: HardwareSettings = field(default_factory=HardwareSettings)
    doctor: DoctorSettings = field(default_factory=DoctorSettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    cost: CostSettings = field(default_factory=CostSettings)


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (if any), apply environment overrides, and validate."""
    env = os.environ if env is None else env
    path = config_file(path, env)
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    for section, values in _env_overrides(env).items():
        raw.setdefault(section, {}).update(values)
    settings = _build(raw, source=str(path) if path else "defaults")
    validate(settings)
    return settings


def config_file(path: Path | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file settings are read from (`path`, else $RAG_CONFIG, else the user's)."""
    env = os.environ if env is None else env
    if path is None and env.get("RAG_CONFIG"):
        path = Path(env["RAG_CONFIG"])
    if path is None and USER_CONFIG_PATH.expanduser().is_file():
        path = USER_CONFIG_PATH.expanduser()
    return path


def override(settings: Settings, section: str, **values: Any) -> Settings:
    """Return settings with some keys of one section replaced (for command-line flags)."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return settings
    updated = dataclasses.replace(getattr(settings, section), **given)
    result = dataclasses.replace(settings, **{section: updated})
    validate(result)
    return result


def validate(settings: Settings) -> None:
    if not settings.storage.data_dir.strip():
        raise ConfigError("storage.data_dir is empty: set it to the directory for the index")
    c = settings.chunking
    if c.chunk_tokens < 16:
        raise ConfigError(f"chunking.chunk_tokens = {c.chunk_tokens}: use at least 16")
    if not 0 <= c.overlap_tokens < c.chunk_tokens:
        raise ConfigError(
            f"chunking.overlap_tokens = {c.overlap_tokens}: must be >= 0 and below "
            f"chunking.chunk_tokens ({c.chunk_tokens})"
        )
    ingest = settings.ingest
    if ingest.parse_timeout_s <= 0 or ingest.parse_memory_mb < 64 or ingest.max_file_mb < 1:
        raise ConfigError(
            "ingest.parse_timeout_s must be > 0, ingest.parse_memory_mb >= 64 and "
            "ingest.max_file_mb >= 1"
        )
    if ingest.parse_workers < 1 or ingest.flush_chunks < 1:
        raise ConfigError("ingest.parse_workers and ingest.flush_chunks must be at least 1")
    if (
        min(ingest.max_text_chars_per_page, ingest.max_chunks_per_file, ingest.max_chunks_per_kib)
        < 1
    ):
        raise ConfigError(
            "ingest.max_text_chars_per_page, ingest.max_chunks_per_file and "
            "ingest.max_chunks_per_kib must be at least 1"
        )
    if ingest.ray_actors < 0 or ingest.ray_cpus_per_actor <= 0 or ingest.ray_gpus_per_actor < 0:
        raise ConfigError(
            "ingest.ray_actors must be >= 0 (0 = fill the cluster), ingest.ray_cpus_per_actor "
            "> 0 and ingest.ray_gpus_per_actor >= 0"
        )
    if settings.storage.lock_wait_s < 0 or settings.storage.keep_versions_s < 0:
        raise ConfigError("storage.lock_wait_s and storage.keep_versions_s must be >= 0")
    _validate_storage_uri(settings.storage)
    _validate_retrieval(settings.retrieval)
    _validate_cost(settings.cost)
    if settings.embedding.device not in ("auto", "cpu", "cuda", "mps"):
        raise ConfigError(
            f"embedding.device = {settings.embedding.device!r}: use auto, cpu, cuda or mps"
        )
    if settings.embedding.backend not in ("torch", "onnx-int8"):
        raise ConfigError(
            f"embedding.backend = {settings.embedding.backend!r}: use torch or onnx-int8"
        )
    if settings.embedding.batch_size < 1:
        raise ConfigError(f"embedding.batch_size = {settings.embedding.batch_size}: use at least 1")
    llm = settings.llm
    _validate_engine(llm, settings.retrieval)
    if llm.answer_tokens < 1 or llm.context_tokens <= llm.answer_tokens:
        raise ConfigError(
            f"llm.answer_tokens = {llm.answer_tokens} must be >= 1 and below "
            f"llm.context_tokens = {llm.context_tokens}"
        )
    if llm.temperature < 0:
        raise ConfigError(f"llm.temperature = {llm.temperature}: must be >= 0")
    if llm.kv_bits not in (0, 4, 8):
        raise ConfigError(f"llm.kv_bits = {llm.kv_bits}: use 0 (unquantized), 4 or 8")
    if llm.concurrency < 1:
        raise ConfigError(f"llm.concurrency = {llm.concurrency}: use at least 1")
    if llm.cpu_threads < 0:
        raise ConfigError(f"llm.cpu_threads = {llm.cpu_threads}: use 0 (all cores) or more")
    if settings.server.max_queue < 1:
        raise ConfigError(f"server.max_queue = {settings.server.max_queue}: use at least 1")
    if settings.server.request_timeout_s <= 0:
        raise ConfigError(
            f"server.request_timeout_s = {settings.server.request_timeout_s}: must be > 0"
        )
    server = settings.server
    limits = {
        "upload_max_file_mb": server.upload_max_file_mb,
        "upload_max_files": server.upload_max_files,
        "upload_max_request_mb": server.upload_max_request_mb,
        "max_ingest_jobs": server.max_ingest_jobs,
    }
    for key, value in limits.items():
        if value < 1:
            raise ConfigError(f"server.{key} = {value}: use at least 1")
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"server.port = {settings.server.port}: not a TCP port")
    for key, value in dataclasses.asdict(settings.hardware).items():
        if isinstance(value, float) and value < 0:
            raise ConfigError(f"hardware.{key} = {value}: must be >= 0")
    if settings.doctor.min_free_disk_gb < 0:
        raise ConfigError(
            f"doctor.min_free_disk_gb = {settings.doctor.min_free_disk_gb}: must be >= 0"
        )
    if settings.maintenance.interval_h < 0:
        raise ConfigError(
            f"maintenance.interval_h = {settings.maintenance.interval_h}: must be >= 0"
        )


def _validate_engine(llm: LlmSettings, retrieval: RetrievalSettings) -> None:
    speed = ("typical_prompt_tokens", "target_ttft_s", "target_tokens_per_s")
    if any(getattr(llm, key) <= 0 for key in speed):
        raise ConfigError(f"{', '.join(f'llm.{k}' for k in speed)}: each must be > 0")
    if llm.engine not in ENGINES:
        raise ConfigError(f"llm.engine = {llm.engine!r}: use {', '.join(ENGINES)}")
    if llm.engine != "openai":
        return
    if not llm.base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f'llm.base_url = {llm.base_url!r}: llm.engine = "openai" needs the server\'s '
            "OpenAI API root, e.g. http://127.0.0.1:8080/v1"
        )
    if llm.connect_timeout_s <= 0:
        raise ConfigError(f"llm.connect_timeout_s = {llm.connect_timeout_s}: must be > 0")
    if retrieval.rerank == "llm":
        raise ConfigError(
            'retrieval.rerank = "llm" scores passages with the local model\'s logits; use '
            'it with a local engine (llm.engine = "auto"), or set retrieval.rerank = "none"'
        )


def _validate_storage_uri(storage: StorageSettings) -> None:
    uri = storage.uri.strip()
    if uri and not uri.startswith("s3://"):
        raise ConfigError(
            f'storage.uri = {storage.uri!r}: use "" (the index under storage.data_dir) or '
            "s3://bucket/prefix"
        )
    if uri and not uri[len("s3://") :].split("/", 1)[0]:
        raise ConfigError(f"storage.uri = {storage.uri!r} names no bucket: s3://bucket/prefix")
    endpoint = storage.s3_endpoint.strip()
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"storage.s3_endpoint = {storage.s3_endpoint!r}: give a URL, http(s)://host:port"
        )
    if endpoint.startswith("http://") and not storage.s3_allow_http:
        raise ConfigError(
            f"storage.s3_endpoint = {endpoint!r} is plain http: set storage.s3_allow_http = "
            "true to allow it (keys and documents then cross the network unencrypted)"
        )
    # The holder refreshes the lease every third of it; under a few seconds a slow request
    # to the store would lose it.
    if storage.lease_s < 1:
        raise ConfigError(f"storage.lease_s = {storage.lease_s}: use at least 1")


def _validate_retrieval(r: RetrievalSettings) -> None:
    choices = {
        "mode": ("hybrid", "vector", "keyword"),
        "rerank": ("none", "llm"),
        "rewrite": ("rules", "llm", "off"),
    }
    for key, allowed in choices.items():
        if getattr(r, key) not in allowed:
            raise ConfigError(f"retrieval.{key} = {getattr(r, key)!r}: use {', '.join(allowed)}")
    for key in ("k", "candidates", "rerank_top"):
        if getattr(r, key) < 1:
            raise ConfigError(f"retrieval.{key} = {getattr(r, key)}: use at least 1")
    for key in ("max_per_document", "vector_index_rows"):
        if getattr(r, key) < 0:
            raise ConfigError(f"retrieval.{key} = {getattr(r, key)}: must be >= 0")
    for key in ("text_weight", "keyword_text_weight", "word_weight"):
        if not 0.0 <= getattr(r, key) <= 1.0:
            raise ConfigError(f"retrieval.{key} = {getattr(r, key)}: a share, 0 to 1")
    if not -1.0 <= r.min_score <= 1.0 + r.word_weight:
        raise ConfigError(
            f"retrieval.min_score = {r.min_score}: cosine similarity plus word_weight times "
            f"word coverage, -1 to {1.0 + r.word_weight:g}"
        )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _sections() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Settings)}  # type: ignore[misc]


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections = _sections()
    found: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith("RAG_") or name == "RAG_CONFIG":
            continue
        rest = name[len("RAG_") :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        keys = {f.name for f in dataclasses.fields(sections[section])} if section else set()
        key = rest[len(section) + 1 :] if section else ""
        if key not in keys:
            raise ConfigError(
                f"environment variable {name} names no setting; "
                "use RAG_<SECTION>_<KEY> with a key from config.toml, or unset it"
            )
        found.setdefault(section, {})[key] = value  # type: ignore[index]
    return found


def _build(raw: dict[str, Any], source: str) -> Settings:
    sections = _sections()
    built: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys")
        cls = sections[section]
        types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{source}: unknown key {section}.{key}")
            kwargs[key] = _cast(f"{section}.{key}", value, types[key])
        built[section] = cls(**kwargs)
    return Settings(**built)


def _cast(name: str, value: Any, kind: type) -> Any:
    """Coerce a TOML or environment value to the field's type, naming the key on failure."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if kind in (int, float):
                return kind(text)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{name} = {value!r}: expected {kind.__name__}")


def _validate_cost(cost: CostSettings) -> None:
    amounts = {
        "hardware_price": cost.hardware_price,
        "power_w": cost.power_w,
        "electricity_per_kwh": cost.electricity_per_kwh,
        "cloud_input_per_mtok": cost.cloud_input_per_mtok,
        "cloud_output_per_mtok": cost.cloud_output_per_mtok,
    }
    negative = [f"cost.{k} = {v}" for k, v in amounts.items() if v < 0]
    if negative:
        raise ConfigError(f"{', '.join(negative)}: amounts must be >= 0")
    if cost.amortization_months <= 0:
        raise ConfigError(f"cost.amortization_months = {cost.amortization_months}: must be > 0")
