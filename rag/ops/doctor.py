"""`rag doctor`: checks of this install, each ok, warn or fail with its evidence and its fix.

Every check is a small function returning a `Check`; `run_checks` runs them all and turns a
check that crashes into a failed check, so the doctor itself always finishes. Nothing here
loads model weights: a check reads metadata, files and the index's own statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rag.config import Settings
from rag.errors import RagError
from rag.llm.choice import resolve_model, with_model
from rag.ops.check import FAIL, Check
from rag.ops.health import check_index
from rag.ops.machinechecks import (
    check_disk,
    check_engine,
    check_memory,
    check_mlx_backend,
    check_ocr,
    check_packages,
    check_port,
    check_torch_device,
)
from rag.ops.modelchecks import (
    check_embedding_model,
    check_generation_server,
    check_llm_model,
    check_model_fit,
)

if TYPE_CHECKING:
    pass


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a person would fix things: install, machine, models, data."""
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("packages", lambda: [check_packages()]),
        ("mlx backend", lambda: [check_mlx_backend()]),
        ("llm engine", lambda: [check_engine(settings.llm)]),
        ("embedding device", lambda: [check_torch_device(settings.embedding)]),
        ("memory", lambda: [check_memory()]),
        ("model fit", lambda: check_model_fit(settings)),
        ("generation server", lambda: check_generation_server(settings.llm)),
        ("disk", lambda: [check_disk(settings)]),
        ("embedding model", lambda: [check_embedding_model(settings.embedding)]),
        ("ocr", lambda: [check_ocr(settings.ingest)]),
        ("llm model", lambda: [check_llm_model(chosen_model(settings).llm)]),
        ("index", lambda: check_index(settings)),
        ("port", lambda: [check_port(settings.server)]),
    ]
    checks: list[Check] = []
    for name, step in steps:
        try:
            checks += step()
        except Exception as e:  # a broken install raises anything; report it, go on
            message = e.message if isinstance(e, RagError) else f"{type(e).__name__}: {e}"
            checks.append(Check(name, FAIL, message, "see docs/troubleshooting.md"))
    return checks


def chosen_model(settings: Settings) -> Settings:
    """`settings` with llm.model = "auto" resolved to the model it picks on this machine."""

    return with_model(settings, resolve_model(settings))
