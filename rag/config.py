"""Settings: one frozen struct per `config.toml` section, loaded explicitly and passed around.

Precedence: command-line flag > environment (`RAG_<SECTION>_<KEY>`) > config file > default.
The config file is `$RAG_CONFIG` when set, else `~/.config/rag/config.toml` when it exists.
Unknown sections, keys and environment variables are errors, so a typo never goes unnoticed.
Types, choices (`Literal`) and bounds (`Meta`) are checked by msgspec as the file is read;
`validate` adds the rules that tie keys together. Environment values are text: numbers and
booleans are converted, and a list (llm.stop) is a JSON array.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from rag.errors import ConfigError

USER_CONFIG_PATH = Path("~/.config/rag/config.toml")
AtLeastOne = Annotated[int, Meta(ge=1)]
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Share = Annotated[float, Meta(ge=0, le=1)]  # of a whole, 0 to 1
LANGUAGES = 'Tesseract language codes joined by "+", e.g. "eng" or "eng+deu"'
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True}
BOOLEAN_WORDS |= {"0": False, "false": False, "no": False, "off": False}


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A config.toml section: keys with their types and defaults."""


class StorageSettings(Section, frozen=True):
    data_dir: str = "~/.local/share/rag"
    collection: str = "default"
    lock_wait_s: NonNegative = 600.0
    keep_versions_s: NonNegative = 86400.0
    # Keep each ingested file (content-addressed under the data dir) for the citation viewer.
    keep_originals: bool = True
    uri: str = ""
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_allow_http: bool = False
    # The holder refreshes the lease every third of it; under a few seconds a slow request
    # to the store would lose it.
    lease_s: Annotated[float, Meta(ge=1)] = 30.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def remote(self) -> bool:
        """Whether the index lives in an object store rather than under data_dir."""
        return bool(self.uri.strip())


class EmbeddingSettings(Section, frozen=True):
    model: str = "bundled"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: AtLeastOne = 32
    backend: Literal["torch", "onnx-int8"] = "torch"
    cache_dir: str = "~/.cache/rag"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


class ChunkingSettings(Section, frozen=True):
    chunk_tokens: Annotated[int, Meta(ge=16)] = 180
    overlap_tokens: int = 30


class IngestSettings(Section, frozen=True):
    parse_timeout_s: Positive = 120.0
    parse_memory_mb: Annotated[int, Meta(ge=64)] = 2048
    max_file_mb: AtLeastOne = 256
    parse_workers: AtLeastOne = 1
    flush_chunks: AtLeastOne = 512
    max_text_chars_per_page: AtLeastOne = 100_000
    max_chunks_per_file: AtLeastOne = 50_000
    max_chunks_per_kib: AtLeastOne = 64
    ray_actors: Annotated[int, Meta(ge=0)] = 0  # 0 = fill the cluster
    ray_cpus_per_actor: Positive = 1.0
    ray_gpus_per_actor: NonNegative = 0.0
    # Which PDF pages are OCR'd (ingest/ocr.py).
    ocr: Literal["auto", "off", "force"] = "auto"
    ocr_languages: Annotated[str, Meta(pattern=r"^\w+(\+\w+)*$", description=LANGUAGES)] = "eng"
    ocr_seconds_per_page: Positive = 30.0
    ocr_max_pages: AtLeastOne = 1000


class RetrievalSettings(Section, frozen=True):
    k: AtLeastOne = 4
    mode: Literal["hybrid", "vector", "keyword"] = "hybrid"
    candidates: AtLeastOne = 50
    text_weight: Share = 0.3
    keyword_text_weight: Share = 0.6
    max_per_document: Annotated[int, Meta(ge=0)] = 3
    min_score: float = 0.55
    word_weight: Share = 0.4
    model_check_min_score: float = 0.35
    model_check_logit: float = 1.0
    rerank: Literal["none", "llm"] = "none"
    rerank_top: AtLeastOne = 4
    rewrite: Literal["rules", "llm", "off"] = "rules"
    vector_index_rows: Annotated[int, Meta(ge=0)] = 50000


class LlmSettings(Section, frozen=True):
    # "auto" picks mlx or llamacpp for this machine (rag.llm.load).
    engine: Literal["auto", "mlx", "llamacpp", "openai"] = "auto"
    model: str = "auto"
    context_tokens: int = 2048
    answer_tokens: AtLeastOne = 160
    temperature: NonNegative = 0.0
    kv_bits: Literal[0, 4, 8] = 0  # 0: unquantized
    concurrency: AtLeastOne = 4
    stop: tuple[str, ...] = ()
    cpu_threads: Annotated[int, Meta(ge=0)] = 0  # 0: all cores
    base_url: str = ""
    served_model: str = ""
    api_key_env: str = "LLM_API_KEY"
    connect_timeout_s: Positive = 10.0
    # What llm.model = "auto" asks of a model besides fitting (rag.llm.choice).
    typical_prompt_tokens: AtLeastOne = 1000
    target_ttft_s: Positive = 20.0
    target_tokens_per_s: Positive = 5.0
    cache_dir: str = "~/.cache/rag/models"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


class ServerSettings(Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    max_queue: AtLeastOne = 8
    request_timeout_s: Positive = 300.0
    allowed_hosts: str = "localhost,127.0.0.1,[::1]"
    cors_origins: str = ""
    rate_limit_per_min: int = 120
    upload_max_file_mb: AtLeastOne = 64
    upload_max_files: AtLeastOne = 32
    upload_max_request_mb: AtLeastOne = 256
    max_ingest_jobs: AtLeastOne = 8
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


class HardwareSettings(Section, frozen=True):
    memory_limit_gb: NonNegative = 0.0
    os_headroom_gb: NonNegative = 4.0
    memory_bandwidth_gb_s: NonNegative = 0.0
    speed_cache_dir: str = "~/.cache/rag"

    @property
    def speed_cache_path(self) -> Path:
        return Path(self.speed_cache_dir).expanduser()


class DoctorSettings(Section, frozen=True):
    min_free_disk_gb: NonNegative = 5.0


class MaintenanceSettings(Section, frozen=True):
    interval_h: NonNegative = 24.0


class CostSettings(Section, frozen=True):
    currency: str = "USD"
    hardware_price: NonNegative = 0.0
    amortization_months: Positive = 36.0
    power_w: NonNegative = 0.0
    electricity_per_kwh: NonNegative = 0.0
    cloud_input_per_mtok: NonNegative = 0.15
    cloud_output_per_mtok: NonNegative = 0.6


class Settings(Section, frozen=True):
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    embedding: EmbeddingSettings = msgspec.field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = msgspec.field(default_factory=ChunkingSettings)
    ingest: IngestSettings = msgspec.field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = msgspec.field(default_factory=RetrievalSettings)
    llm: LlmSettings = msgspec.field(default_factory=LlmSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    hardware: HardwareSettings = msgspec.field(default_factory=HardwareSettings)
    doctor: DoctorSettings = msgspec.field(default_factory=DoctorSettings)
    maintenance: MaintenanceSettings = msgspec.field(default_factory=MaintenanceSettings)
    cost: CostSettings = msgspec.field(default_factory=CostSettings)


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (if any), apply environment overrides, and validate."""
    env = os.environ if env is None else env
    path = config_file(path, env)
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    source = str(path) if path else "defaults"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: not a table of sections")
    for section, values in _env_overrides(env).items():
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys")
        raw[section].update(values)
    settings = _convert(raw, Settings, source)
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
    """Return settings with some keys of one section replaced (for command-line flags),
    checked as the file's are."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return settings
    raw = msgspec.to_builtins(settings)
    raw[section].update(given)
    result = _convert(raw, Settings, "command line")
    validate(result)
    return result


def replace(settings: Settings, section: str, **values: Any) -> Settings:
    """Settings with some keys of one section replaced by values already checked."""
    updated = msgspec.structs.replace(getattr(settings, section), **values)
    return msgspec.structs.replace(settings, **{section: updated})


def validate(settings: Settings) -> None:
    """The rules that tie keys together (each key's own type and bounds are checked when
    the settings are read)."""
    if not settings.storage.data_dir.strip():
        raise ConfigError("storage.data_dir is empty: set it to the directory for the index")
    c = settings.chunking
    if not 0 <= c.overlap_tokens < c.chunk_tokens:
        raise ConfigError(
            f"chunking.overlap_tokens = {c.overlap_tokens}: must be >= 0 and below "
            f"chunking.chunk_tokens ({c.chunk_tokens})"
        )
    _validate_storage_uri(settings.storage)
    _validate_engine(settings.llm, settings.retrieval)
    llm = settings.llm
    if llm.context_tokens <= llm.answer_tokens:
        raise ConfigError(
            f"llm.answer_tokens = {llm.answer_tokens} must be >= 1 and below "
            f"llm.context_tokens = {llm.context_tokens}"
        )
    r = settings.retrieval
    if not -1.0 <= r.min_score <= 1.0 + r.word_weight:
        raise ConfigError(
            f"retrieval.min_score = {r.min_score}: cosine similarity plus word_weight times "
            f"word coverage, -1 to {1.0 + r.word_weight:g}"
        )
    if not -1.0 <= r.model_check_min_score <= r.min_score:
        raise ConfigError(
            f"retrieval.model_check_min_score = {r.model_check_min_score}: -1 to "
            f"retrieval.min_score ({r.min_score}; equal to it turns the model's check off)"
        )


def _validate_engine(llm: LlmSettings, retrieval: RetrievalSettings) -> None:
    if llm.engine != "openai":
        return
    if not llm.base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f'llm.base_url = {llm.base_url!r}: llm.engine = "openai" needs the server\'s '
            "OpenAI API root, e.g. http://127.0.0.1:8080/v1"
        )
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


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _section_types() -> dict[str, type[Section]]:
    return {f.name: f.type for f in msgspec.structs.fields(Settings)}


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    sections = _section_types()
    found: dict[str, dict[str, Any]] = {}
    for name, value in env.items():
        if not name.startswith("RAG_") or name == "RAG_CONFIG":
            continue
        rest = name[len("RAG_") :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), "")
        kinds = typing.get_type_hints(sections[section]) if section else {}
        key = rest[len(section) + 1 :] if section else ""
        if key not in kinds:
            raise ConfigError(
                f"environment variable {name} names no setting; "
                "use RAG_<SECTION>_<KEY> with a key from config.toml, or unset it"
            )
        found.setdefault(section, {})[key] = _from_text(name, value, kinds[key])
    return found


def _from_text(name: str, text: str, kind: Any) -> Any:
    """An environment value as the key's type wants it: a boolean word, or a JSON list
    (numbers are converted by msgspec)."""
    if kind is bool:
        return BOOLEAN_WORDS.get(text.strip().lower(), text)
    if typing.get_origin(kind) is tuple:
        try:
            return json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            raise ConfigError(f'{name} = {text!r}: give a JSON list, e.g. ["###"]') from e
    return text


def _convert(raw: dict[str, Any], kind: type[Settings], source: str) -> Settings:
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(_explain(str(e), raw, source)) from None


def _explain(message: str, raw: dict[str, Any], source: str) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.llm.concurrency`" in the words of the key."""
    problem, _, where = message.partition(" - at ")
    path = [part for part in where.strip("`").removeprefix("$").split(".") if part]
    unknown = problem.removeprefix("Object contains unknown field ").strip("`")
    if problem.startswith("Object contains unknown field"):
        if not path:
            return f"{source}: unknown section [{unknown}]"
        return f"{source}: unknown key {path[0]}.{unknown}"
    if len(path) == 1:
        return f"{source}: [{path[0]}] must be a table of keys"
    section, key = path[0], path[1]
    value = raw.get(section, {}).get(key)
    if problem.startswith("Invalid enum value"):
        choices = typing.get_args(typing.get_type_hints(_section_types()[section])[key])
        return f"{section}.{key} = {value!r}: use {', '.join(str(c) for c in choices)}"
    bound = re.fullmatch(r"Expected `\w+` ([<>]=?) (\S+)", problem)
    if bound:  # "Expected `float` > 0.0", "Expected `int` >= 1"
        op, limit = bound[1], float(bound[2])
        if (op, limit) == (">=", 1.0):  # a positive count
            op, limit = ">", 0.0
        return f"{section}.{key} = {value!r}: must be {op} {limit:g}"
    wanted = problem.removeprefix("Expected ").split(", got")[0].replace("`", "")
    hint = _description(_section_types()[section], key)
    return f"{section}.{key} = {value!r}: " + (hint or f"expected {wanted}")


def _description(section: type[Section], key: str) -> str:
    """What a key's `Meta(description=...)` says it takes, if it says."""
    kind = typing.get_type_hints(section, include_extras=True).get(key)
    metas = [m for m in getattr(kind, "__metadata__", ()) if isinstance(m, Meta)]
    return next((m.description for m in metas if m.description), "")
