"""Time the walking skeleton on this machine: ingest the samples, re-ingest, answer once.

The answer is timed twice on the same packed prompt: through rag's engine and through
mlx-lm's own `stream_generate` (the baseline), so the ratio shows what rag's layer costs.

    python bench/walkthrough.py [--answer-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.run import run_ingest  # noqa: E402
from rag.config import Settings, StorageSettings, override  # noqa: E402
from rag.qa.answerer import load_answerer  # noqa: E402

QUESTION = "How quickly must the on-call engineer acknowledge a page?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(storage=StorageSettings(data_dir=tmp))
        # The baseline is mlx-lm's, so rag's engine is MLX here too, whatever "auto" picks
        # (bench/generate.py compares the llama.cpp engine with raw llama-cpp-python).
        settings = override(settings, "llm", answer_tokens=args.answer_tokens, engine="mlx")
        started = time.perf_counter()
        answerer = load_answerer(settings)
        print(f"load models        {time.perf_counter() - started:7.2f} s")

        def ingest() -> None:
            report = run_ingest(
                [ROOT / "samples"],
                collection="default",
                chunking=settings.chunking,
                embedder=answerer.embedder,
                store=answerer.store,
            )
            print(
                f"ingest samples/    {report.seconds:7.2f} s  ({report.added} added, "
                f"{report.unchanged} unchanged, {report.chunks} chunks)"
            )

        ingest()
        ingest()

        answer = answerer.ask(QUESTION, "default", settings.retrieval.k)
        u = answer.usage
        print(
            f"rag ask            ttft {u.ttft_s:6.2f} s  decode {u.tokens_per_s:6.2f} tok/s  "
            f"({u.prompt_tokens} prompt, {u.completion_tokens} answer tokens)"
        )

        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        passages = answerer.search(QUESTION, "default", settings.retrieval.k)
        ids = answerer.pack(QUESTION, passages).prompt_ids
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for _ in stream_generate(
            answerer.engine.model,
            answerer.engine.tokenizer,
            ids,
            max_tokens=args.answer_tokens,
            sampler=make_sampler(temp=0.0),
        ):
            n += 1
            first = first or time.perf_counter()
            last = time.perf_counter()
        base_ttft = first - t0
        base_tps = (n - 1) / (last - first) if n > 1 else 0.0
        print(
            f"mlx-lm baseline    ttft {base_ttft:6.2f} s  decode {base_tps:6.2f} tok/s  "
            f"({len(ids)} prompt, {n} answer tokens)"
        )
        print(
            f"ratio rag/baseline ttft {u.ttft_s / base_ttft:5.2f}x  "
            f"decode {u.tokens_per_s / base_tps:5.2f}x"
        )


if __name__ == "__main__":
    main()
