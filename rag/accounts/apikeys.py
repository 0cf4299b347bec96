"""API keys: random tokens stored only as hashes, each scoped to some collections.

Keys are 32 random bytes, so a plain SHA-256 is enough to store them (nothing to brute-force,
unlike a password); lookups compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.errors import NotFoundError, RagError, UsageError

KEYS_FILE = "keys.json"
PREFIX = "rag_"
ALL_COLLECTIONS = "*"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    collections: list[str] = field(default_factory=list)
    created_s: float = 0.0

    def allows(self, collection: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection in self.collections


def _path(data_path: Path) -> Path:
    return data_path / KEYS_FILE


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_keys(data_path: Path) -> list[ApiKey]:
    path = _path(data_path)
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["keys"]
        return [ApiKey(**row) for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RagError(f"{path} is not a valid keys file ({e}); fix or remove it") from e


def _save(data_path: Path, keys: list[ApiKey]) -> None:
    data_path.mkdir(parents=True, exist_ok=True)
    path = _path(data_path)
    tmp = path.with_suffix(".tmp")
    # Written owner-only and swapped in whole, so a crash never leaves half a file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": [asdict(k) for k in keys]}, f, indent=2)
    os.replace(tmp, path)


def add_key(data_path: Path, name: str, collections: list[str]) -> str:
    """Create a key and return its token; only its hash is kept, so show it once."""
    if not _NAME.match(name):
        raise UsageError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if not collections:
        raise UsageError("give at least one --collection (or '*' for all collections)")
    keys = load_keys(data_path)
    if any(k.name == name for k in keys):
        raise UsageError(f"a key named {name!r} exists; remove it first or pick another name")
    token = PREFIX + secrets.token_urlsafe(32)
    keys.append(ApiKey(name, _digest(token), sorted(set(collections)), round(time.time(), 3)))
    _save(data_path, keys)
    return token


def remove_key(data_path: Path, name: str) -> None:
    keys = load_keys(data_path)
    kept = [k for k in keys if k.name != name]
    if len(kept) == len(keys):
        raise NotFoundError(f"no key named {name!r}; `rag keys list` shows them")
    _save(data_path, kept)


def find_key(keys: list[ApiKey], token: str) -> ApiKey | None:
    digest = _digest(token)
    found = None
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(key.sha256, digest):
            found = key
    return found
