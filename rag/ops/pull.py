"""`rag models pull`: a model from the Hugging Face hub into the local hub cache.

What is pulled: the model `auto` would pick among the catalog (rag.models.catalog) on this machine,
or the one named, in the format this machine's engine runs (rag.llm.load): an MLX 4-bit
directory where MLX has a GPU, else one GGUF file for llama.cpp. Each file lands in the
standard cache layout (HF_HUB_CACHE: blobs/<hash>, snapshots/<commit>/<path>, refs/main), so
`llm.model` can name the repo id (a directory) or the snapshot's .gguf path.

The free disk is checked against the bytes still to fetch before any byte is fetched. A
transfer that breaks keeps its partial blob and the next pull continues it with an HTTP
Range request (huggingface_hub's own downloads delete theirs). Every file is checked
against the hub's metadata: sha256 for LFS files, the git blob hash for the rest; a file
that does not match is deleted and refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import USER_CONFIG_PATH, Settings, config_file, replace
from rag.errors import ModelLoadError, RagError, UsageError
from rag.llm.choice import choose_model_spec, plan_candidates
from rag.llm.load import choose_engine
from rag.llm.probe import speed_for
from rag.models.catalog import CATALOG, catalog_spec
from rag.models.hardware import resolve_hardware
from rag.models.spec import embedder_weights_bytes

# Catalog MLX repo -> the publisher's own GGUF repo and its single-file Q4_K_M, for
# machines where llama.cpp runs the model. Only repos whose file names we know for sure.
GGUF_FILES = {
    "mlx-community/Qwen2.5-0.5B-Instruct-4bit": (
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
    ),
    "mlx-community/Qwen2.5-1.5B-Instruct-4bit": (
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
    ),
    "mlx-community/Qwen2.5-3B-Instruct-4bit": (
        "Qwen/Qwen2.5-3B-Instruct-GGUF",
        "qwen2.5-3b-instruct-q4_k_m.gguf",
    ),
}
# Files an MLX / Hugging Face model directory needs (weights, config, tokenizer, template).
_DIRECTORY_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken", ".md")
_PARTIAL_SUFFIX = ".pull-partial"
_HASH_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Target:
    repo_id: str
    gguf: bool  # one .gguf file (llama.cpp) rather than a model directory (MLX)
    filename: str | None = None  # the .gguf file, when known before listing the repo
    reason: str = ""


@dataclass(frozen=True)
class HubFile:
    path: str
    size_bytes: int
    blob: str  # the cache's blob name: the LFS sha256, else the git blob sha1
    lfs: bool


@dataclass(frozen=True)
class Pulled:
    repo_id: str
    commit: str
    snapshot: Path
    files: tuple[str, ...]
    size_bytes: int
    fetched_bytes: int
    already_here: bool
    model: str  # the llm.model value that names what was pulled

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["snapshot"] = str(self.snapshot)
        return out


def wants_gguf(settings: Settings) -> bool:
    """Whether this machine's engine runs GGUF files (llama.cpp, MLX's CPU) rather than MLX."""

    if settings.llm.engine == "openai":
        raise UsageError('llm.engine = "openai": the model runs elsewhere; nothing to pull')
    choice = choose_engine(replace(settings, "llm", model="auto").llm)
    return not (choice.kind == "mlx" and (choice.backend != "cpu" or settings.llm.engine == "mlx"))


def choose_target(name: str, settings: Settings) -> Target:
    """What `rag models pull NAME` fetches: `auto`, a catalog name or any hub repo id."""

    gguf = wants_gguf(settings)
    if name == "auto":
        candidates = [s for s in CATALOG if not gguf or s.name in GGUF_FILES]
        name, reason = _auto_choice(settings, [(s.name, s) for s in candidates])
    else:
        reason = "named"
    if catalog_spec(name) is not None and gguf:
        if name not in GGUF_FILES:
            known = ", ".join(sorted(GGUF_FILES))
            raise UsageError(
                f"{name} is an MLX model and this machine runs GGUF files (llama.cpp); no GGUF "
                f"repo is known for it: name a GGUF repo id instead, or one of {known}"
            )
        repo_id, filename = GGUF_FILES[name]
        return Target(repo_id, True, filename, reason)
    if name.count("/") != 1:
        raise UsageError(
            f"{name!r} is neither `auto`, a catalog model nor a hub repo id (owner/name)"
        )
    return Target(name, gguf, None, reason)


def _auto_choice(settings: Settings, candidates: list[tuple[str, Any]]) -> tuple[str, str]:

    hardware = resolve_hardware(settings.hardware)
    try:
        speed = speed_for(settings, hardware)
    except RagError:
        speed = None  # no probe possible: choose by memory alone
    planned = plan_candidates(
        hardware, candidates, settings, embedder_weights_bytes(settings.embedding), speed
    )
    choice = choose_model_spec(
        planned,
        settings.llm.target_ttft_s,
        settings.llm.target_tokens_per_s,
        settings.llm.answer_tokens,
    )
    if choice.model is None:
        raise UsageError("auto: no catalog model to pull fits this machine")
    # choose_model_spec speaks of installed models; here the candidates are the catalog's.
    return choice.model, "auto: " + choice.reason.replace("installed model", "catalog model")


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def pull(
    target: Target,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Pulled:
    """Fetch `target` into the hub cache; a complete model is left as it is."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    commit, files = _list_files(target)
    repo_dir = cache / repo_folder_name(repo_id=target.repo_id, repo_type="model")
    snapshot = repo_dir / "snapshots" / commit
    missing = [f for f in files if not (snapshot / f.path).is_file()]
    total = sum(f.size_bytes for f in files)
    one_gguf = len(files) == 1 and files[0].path.endswith(".gguf")
    model = str(snapshot / files[0].path) if one_gguf else target.repo_id
    if not missing:
        _write_ref(repo_dir, commit)
        names = tuple(f.path for f in files)
        return Pulled(target.repo_id, commit, snapshot, names, total, 0, True, model)
    blobs = repo_dir / "blobs"
    to_fetch = sum(f.size_bytes - _partial_bytes(blobs, f) for f in missing)
    free = free_disk_bytes(cache)
    if to_fetch > free:
        raise UsageError(
            f"{target.repo_id} needs {to_fetch / 1e9:.2f} GB more in {cache} "
            f"({to_fetch:,} bytes) and only {free / 1e9:.2f} GB ({free:,} bytes) is free"
        )
    for f in missing:
        progress(f"{f.path} ({f.size_bytes / 1e6:.1f} MB)")
        _fetch(target.repo_id, commit, f, blobs)
        link = snapshot / f.path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(Path("../" * (f.path.count("/") + 2)) / "blobs" / f.blob)
    _write_ref(repo_dir, commit)
    names = tuple(f.path for f in files)
    return Pulled(target.repo_id, commit, snapshot, names, total, to_fetch, False, model)


def _list_files(target: Target) -> tuple[str, list[HubFile]]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise UsageError("HF_HUB_OFFLINE is set: unset it (or set it to 0) to pull from the hub")
    try:
        info = HfApi(endpoint=constants.ENDPOINT).model_info(target.repo_id, files_metadata=True)
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"{target.repo_id}: no such model on {constants.ENDPOINT}") from e
    except Exception as e:
        # The hub's HTTP errors and httpx's transport errors (not OSErrors) alike.
        raise ModelLoadError(
            f"cannot list {target.repo_id} on {constants.ENDPOINT} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    files = [
        HubFile(
            s.rfilename,
            s.lfs.size if s.lfs else (s.size or 0),
            s.lfs.sha256 if s.lfs else (s.blob_id or ""),
            s.lfs is not None,
        )
        for s in info.siblings or []
    ]
    if any(not f.blob for f in files) or not info.sha:
        raise ModelLoadError(f"{target.repo_id}: the hub gave no file hashes to check against")
    return info.sha, _select(target, files)


def _select(target: Target, files: list[HubFile]) -> list[HubFile]:
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    if target.filename is not None:
        chosen = [f for f in files if f.path == target.filename]
    elif target.gguf and ggufs:
        q4km = [f for f in ggufs if "q4_k_m" in f.path.lower()]
        chosen = q4km if len(q4km) == 1 else ggufs if len(ggufs) == 1 else []
        if not chosen:
            names = ", ".join(f.path for f in ggufs[:12])
            raise UsageError(
                f"{target.repo_id} holds several GGUF files and no single Q4_K_M one ({names}); "
                "download the one you want and set llm.model to its path"
            )
    else:
        chosen = [f for f in files if f.path.endswith(_DIRECTORY_SUFFIXES)]
        if not any(f.path.endswith(".safetensors") for f in chosen):
            chosen = ggufs[:1] if len(ggufs) == 1 else []
    if not chosen:
        what = target.filename or "model weights (.safetensors or one .gguf)"
        raise ModelLoadError(f"{target.repo_id} has no {what}")
    return chosen


def _partial_bytes(blobs: Path, f: HubFile) -> int:
    partial = blobs / (f.blob + _PARTIAL_SUFFIX)
    return min(partial.stat().st_size, f.size_bytes) if partial.is_file() else 0


def _fetch(repo_id: str, commit: str, f: HubFile, blobs: Path) -> None:
    """Download one file into blobs/, continuing a partial one, and check its hash."""
    import fcntl

    blobs.mkdir(parents=True, exist_ok=True)
    # Two pulls of one file would append to the same partial blob: the second waits. The
    # lock lives where huggingface_hub keeps its own (<cache>/.locks/<repo folder>/).
    locks = blobs.parent.parent / ".locks" / blobs.parent.name
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / (f.blob + ".pull.lock")).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _fetch_locked(repo_id, commit, f, blobs)


def _fetch_locked(repo_id: str, commit: str, f: HubFile, blobs: Path) -> None:
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    blob = blobs / f.blob
    if blob.is_file() and _matches(blob, f):
        return
    partial = blobs / (f.blob + _PARTIAL_SUFFIX)
    done = _partial_bytes(blobs, f)
    url = hf_hub_url(repo_id, f.path, revision=commit, endpoint=constants.ENDPOINT)
    try:
        with partial.open("r+b" if done else "wb") as out:
            out.truncate(done)
            out.seek(done)
            http_get(
                url,
                out,
                resume_size=done,
                headers=build_hf_headers(),
                expected_size=f.size_bytes,
                displayed_filename=f.path,
            )
    except Exception as e:
        # httpx's transport errors and the hub's HTTP errors alike: the partial file stays.
        kept = partial.stat().st_size if partial.exists() else 0
        raise ModelLoadError(
            f"download of {repo_id}/{f.path} broke after {kept:,} of {f.size_bytes:,} bytes "
            f"({type(e).__name__}: {e}); run the same pull again to continue it"
        ) from e
    if not _matches(partial, f):
        partial.unlink()
        kind = "sha256" if f.lfs else "git blob hash"
        raise ModelLoadError(
            f"{repo_id}/{f.path}: the downloaded bytes do not match the hub's {kind} "
            f"{f.blob}; the file was deleted (pull again, or check HF_ENDPOINT)"
        )
    partial.replace(blob)


def _matches(path: Path, f: HubFile) -> bool:
    if path.stat().st_size != f.size_bytes:
        return False
    digest = hashlib.sha256() if f.lfs else hashlib.sha1(f"blob {f.size_bytes}\0".encode())
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() == f.blob


def _write_ref(repo_dir: Path, commit: str) -> None:
    # refs/main lets snapshot_download(local_files_only=True) (rag.models.catalog) find the
    # snapshot.
    ref = repo_dir / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != commit:
        ref.write_text(commit)


def set_config_model(model: str, path: Path | None = None) -> Path:
    """Write `llm.model = model` into the config file `rag` reads, keeping everything else.

    Only the [llm] table's `model` line is replaced (its trailing comment kept) or added; the
    result is parsed back and the file restored when it does not read as intended.
    """
    import json
    import re
    import tomllib

    path = path or config_file() or USER_CONFIG_PATH.expanduser()
    before = path.read_text() if path.is_file() else ""
    line = f"model = {json.dumps(model)}"
    lines = before.splitlines()
    header = next((i for i, s in enumerate(lines) if re.match(r"\s*\[llm\]\s*(#.*)?$", s)), None)
    if header is None:
        lines += ["", "[llm]", line] if lines else ["[llm]", line]
    else:
        end = next(
            (i for i in range(header + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        key = re.compile(r"\s*model\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*')(\s*#.*)?$")
        at = next((i for i in range(header + 1, end) if key.match(lines[i])), None)
        if at is None:
            lines.insert(header + 1, line)
        else:
            kept = key.match(lines[at])
            lines[at] = line + ((kept.group(2) if kept else None) or "")
    after = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(after).get("llm", {}).get("model")
    except tomllib.TOMLDecodeError as e:
        parsed = e
    if parsed != model:
        raise UsageError(
            f"could not set llm.model in {path} safely (left unchanged); set it by hand: "
            f"[llm] {line}, or RAG_LLM_MODEL={json.dumps(model)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(after)
    return path


def pulled_models(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The hub models in the local cache, each with the llm.model value that names it."""
    from huggingface_hub import constants

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    found = []
    for repo_dir in sorted(cache.glob("models--*")):
        ref = repo_dir / "refs" / "main"
        snapshot = repo_dir / "snapshots" / (ref.read_text().strip() if ref.is_file() else "")
        if not ref.is_file() or not snapshot.is_dir():
            continue
        files = [p for p in snapshot.rglob("*") if p.is_file()]
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        ggufs = sorted(p for p in files if p.suffix == ".gguf")
        directory = any(p.suffix == ".safetensors" for p in files)
        found.append(
            {
                "name": repo_id,
                "model": repo_id if directory or not ggufs else str(ggufs[0]),
                "size_bytes": sum(p.stat().st_size for p in files),
                "path": str(snapshot),
            }
        )
    return found
