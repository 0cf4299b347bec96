from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from rag.config import Settings, load_settings, override
from rag.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_config_toml_documents_every_setting_with_its_default() -> None:
    text = (ROOT / "config.toml").read_text()
    assert load_settings(ROOT / "config.toml", env={}) == Settings()
    lines = text.splitlines()
    for section in msgspec.structs.fields(Settings):
        assert f"[{section.name}]" in lines
        for key in msgspec.structs.fields(section.type):
            index = next(
                (i for i, line in enumerate(lines) if re.match(rf"{key.name}\s*=", line)), None
            )
            assert index is not None, f"{section.name}.{key.name} missing from config.toml"
            assert lines[index - 1].startswith("#"), f"{section.name}.{key.name} has no comment"


def test_environment_overrides_file_and_casts_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[retrieval]\nk = 3\n[storage]\ndata_dir = "/x"\n')
    settings = load_settings(path, env={"RAG_RETRIEVAL_K": "7", "RAG_LLM_TEMPERATURE": "0.5"})
    assert settings.retrieval.k == 7
    assert settings.llm.temperature == 0.5
    assert settings.storage.data_dir == "/x"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[retrieval]\nkk = 3\n", {}, "unknown key retrieval.kk"),
        ("[nope]\nk = 3\n", {}, "unknown section [nope]"),
        ("[retrieval]\nk = 'three'\n", {}, "retrieval.k = 'three': expected int"),
        ("", {"RAG_RETRIEVAL_KAY": "3"}, "RAG_RETRIEVAL_KAY names no setting"),
        ("", {"RAG_LLM_ANSWER_TOKENS": "x"}, "llm.answer_tokens = 'x': expected int"),
        ("[chunking]\noverlap_tokens = 500\n", {}, "chunking.overlap_tokens = 500"),
        ("[retrieval\n", {}, "not valid TOML"),
        ("[retrieval]\nmode = 'fuzzy'\n", {}, "retrieval.mode = 'fuzzy': use hybrid, vector"),
        ("[retrieval]\nmin_score = 2.0\n", {}, "retrieval.min_score = 2.0"),
        (
            "",
            {"RAG_RETRIEVAL_MODEL_CHECK_MIN_SCORE": "0.6"},
            "retrieval.model_check_min_score = 0.6: -1 to retrieval.min_score (0.55",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=env)
    assert message in e.value.message


def test_rag_config_environment_variable_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9001\n")
    assert load_settings(env={"RAG_CONFIG": str(path)}).server.port == 9001
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"RAG_CONFIG": str(tmp_path / "missing.toml")})


def test_command_line_override_is_validated() -> None:
    assert override(Settings(), "retrieval", k=9).retrieval.k == 9
    assert override(Settings(), "retrieval", k=None) == Settings()
    with pytest.raises(ConfigError):
        override(Settings(), "server", port=70000)
