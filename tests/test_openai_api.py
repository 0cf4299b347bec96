"""The OpenAI-compatible API, driven by the real `openai` client and by curl."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import openai
import pytest

from rag.embed.embedder import Embedder

QUESTION = "How many days of paid vacation do employees get per year?"


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=180)


def test_models_list_collections_the_llm_and_the_embedder(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert "default" in ids
    assert any(i.startswith("smollm2") for i in ids)
    assert "all-MiniLM-L6-v2" in ids


def test_collection_model_answers_from_documents_with_citations(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], max_tokens=20
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 20
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    citations = completion.model_extra["citations"]
    assert citations[0]["source"] == "samples/handbook.md"
    assert "27 days" in citations[0]["text"]
    # Each answer sentence comes checked against the sources it cites.
    sentences = completion.model_extra["sentences"]
    assert sentences and all(s["text"] in choice.message.content for s in sentences)
    assert all(set(s) == {"text", "supported", "citations", "span"} for s in sentences)


def test_streaming_matches_and_ends_with_citations_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    assert finals[0].model_extra["citations"][0]["source"] == "samples/handbook.md"
    assert next(s["text"] for s in finals[0].model_extra["sentences"]) in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12


def test_plain_llm_model_answers_without_documents(client: openai.OpenAI) -> None:
    llm = next(m.id for m in client.models.list() if m.id.startswith("smollm2"))
    completion = client.chat.completions.create(
        model=llm,
        # Phrased so the 135M model answers in English on both engines (on llama.cpp it
        # answers the bare "What is the capital of France?" in French).
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
        max_tokens=16,
    )
    assert "Paris" in completion.choices[0].message.content
    assert completion.model_extra["citations"] == []
    assert completion.model_extra["sentences"] == []


def test_stop_strings_cut_the_answer_where_they_begin(client: openai.OpenAI) -> None:
    llm = next(m.id for m in client.models.list() if m.id.startswith("smollm2"))
    ask = {
        "model": llm,
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
    }
    full = client.chat.completions.create(**ask, max_tokens=16).choices[0].message.content
    assert "Paris" in full
    cut = client.chat.completions.create(**ask, max_tokens=16, stop=["Paris"]).choices[0]
    # Greedy decoding gives the same text up to the stop string, which is not part of it.
    assert cut.message.content == full[: full.index("Paris")].strip()
    assert cut.finish_reason == "stop"


def test_unknown_model_and_bad_requests_are_clear_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="neither a collection nor the LLM"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], n=2
        )


def test_embeddings_equal_the_index_model(client: openai.OpenAI, embedder: Embedder) -> None:
    # The client asks for base64 by default and decodes it; floats are checked with curl below.
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=["kestrel", "harbor"])
    assert [d.index for d in result.data] == [0, 1]
    got = np.array([d.embedding for d in result.data])
    expected = embedder.embed_documents(["kestrel", "harbor"])
    assert np.allclose(got, expected, atol=1e-5)
    assert result.usage.prompt_tokens > 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_float_embeddings_and_a_completion(server: str) -> None:
    def curl(path: str, body: dict) -> dict:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps(body),
                f"{server}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        return json.loads(out.stdout)

    emb = curl("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "kestrel"})
    assert len(emb["data"][0]["embedding"]) == 384
    done = curl(
        "/v1/chat/completions",
        {
            "model": "default",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is the name of the company wiki?"}],
        },
    )
    assert done["object"] == "chat.completion"
    assert done["citations"][0]["source"] == "samples/onboarding.md"


def test_a_client_that_disconnects_stops_its_generation(server: str) -> None:
    import time

    import httpx

    llm = next(
        m["id"]
        for m in httpx.get(f"{server}/v1/models").json()["data"]
        if m["id"].startswith("smollm2")
    )
    body = {
        "model": llm,
        "stream": True,
        "max_tokens": 400,  # about 45 s of decoding on a 2-core CPU if it ran to the end
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}],
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.headers["cache-control"] == "no-store"  # a streamed answer is never cached
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first real token: hang up now
    gone = time.monotonic()
    while "rag_queue_depth 0.0" not in httpx.get(f"{server}/metrics").text:
        assert time.monotonic() - gone < 10, "generation went on after the client left"
        time.sleep(0.2)
