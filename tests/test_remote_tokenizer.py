"""The `openai` engine's tokenizer, loaded without a server: from the GGUF the server runs,
whatever its architecture, or from a directory that holds only a tokenizer.

Counts are checked against llama.cpp's own tokenizer (llama-cpp-python, vocab only) and
transformers' apply_chat_template, both independent of the way rag renders and encodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.errors import ModelLoadError
from rag.llm.base import render_chat
from rag.llm.remote import load_tokenizer
from rag.models.packaged import model_path

MESSAGES = [
    {"role": "system", "content": "Answer from the passages; cite them as [1]."},
    {"role": "user", "content": "[1] The generator is tested on Tuesdays.\n\nWhen is it tested?"},
]


def _llama_cpp_ids(gguf: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    return list(vocab.tokenize(text.encode(), add_bos=False, special=True))


@pytest.mark.slow
def test_a_qwen2_gguf_gives_the_tokenizer_llama_cpp_runs() -> None:
    tokenizer, context = load_tokenizer("qwen2.5-coder-1.5b")
    assert context == 32768
    ids = render_chat(tokenizer, MESSAGES)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nAnswer from the passages")
    assert text.endswith("<|im_start|>assistant\n")
    # <|im_start|> and "system" are single tokens in Qwen's vocabulary.
    assert ids[:3] == [151644, 8948, 198]
    assert ids == _llama_cpp_ids(model_path("qwen2.5-coder-1.5b"), text)
    reference = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    assert ids == list(getattr(reference, "input_ids", reference))


def test_a_tokenizer_only_directory_counts_like_its_gguf(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    gguf_tokenizer, gguf_context = load_tokenizer("bundled")
    directory = tmp_path / "tokenizer"
    gguf_tokenizer.save_pretrained(directory)
    assert not list(directory.glob("*.safetensors"))
    (directory / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))

    tokenizer, context = load_tokenizer(str(directory))
    assert context == gguf_context == 8192
    ids = render_chat(tokenizer, MESSAGES)
    assert ids == render_chat(gguf_tokenizer, MESSAGES)
    reference = AutoTokenizer.from_pretrained(directory).apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True
    )
    assert ids == list(getattr(reference, "input_ids", reference))
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert ids == _llama_cpp_ids(model_path("bundled"), text)


def test_a_tokenizer_directory_without_a_context_length_says_what_to_add(
    tmp_path: Path,
) -> None:
    tokenizer, _ = load_tokenizer("bundled")
    directory = tmp_path / "tokenizer"
    tokenizer.save_pretrained(directory)
    config = directory / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings.pop("model_max_length", None)
    config.write_text(json.dumps(settings))
    with pytest.raises(ModelLoadError, match=r"config\.json \(max_position_embeddings\)"):
        load_tokenizer(str(directory))
