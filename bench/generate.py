"""Generation speed: our engines against raw mlx-lm and llama.cpp, the CPU tuning, batching.

One bundled model, one ~1,000-token RAG prompt (the system prompt, passages from samples/
and a question, exactly as `rag ask` builds it), greedy decoding:

1. ours vs raw: MlxEngine.stream (prefix cache off, so both prefill every token) against
   mlx_lm.stream_generate on the same loaded model; prefill and decode tokens/s, each timed
   here from the tokens' arrival. Target >= 0.95: the engine's layers cost nothing.
2. tuning: the same request on the tuned load (fp32 scales + matmuls split across CPU
   streams), on fp32 scales alone, and on the untuned load (the model as the GGUF file has
   it). Only meaningful on the CPU backend, where rag.llm.cputune does anything.
3. batching: N requests with this prompt one after another, then N at once through the
   batcher (continuous batching on one generation thread); total tokens / wall time. On a
   GPU the 4-bit kernels gain from batching (target >= 2x); MLX's CPU kernel is a scalar loop
   per row, so there the ratio is about what the spare cores give.

4. llama.cpp: LlamaCppEngine.stream (the engine on CPU-only machines; prefix cache off and
   the KV cleared, so both prefill every token) against raw llama-cpp-python's
   `Llama.generate` (the loop `create_completion` runs) on the same Llama object; greedy.
   Target >= 0.95.
5. llama.cpp against MLX's CPU backend: section 4's engine rates over section 1's, the same
   bundled GGUF and prompt (why `llm.engine = "auto"` takes llama.cpp on a CPU-only machine).
6. the default model (`llm.model = "auto"` as the config resolves it here): time to first
   token and decode tokens/s of one request with a `llm.typical_prompt_tokens` prompt, with
   the planner's prediction beside each (target: within 25%).
`--llamacpp-only` runs sections 4 and 6 alone (no MLX); `--engines-only` skips 2 and 3.

The peak memory of the request is shown against the planner's prediction. Comparisons in 1
and 2 run palindromically (A B B A, A B C C B A) and average each side's two runs, so a load
that drifts during the run weighs on every side alike.

    python bench/generate.py [--prompt-tokens 1000] [--answer-tokens 32] [--requests 4]
                             [--llamacpp-only | --engines-only]

The machine should be otherwise idle: the ratios are measured side by side, but a CPU shared
with other work shifts them.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag.config import LlmSettings
from rag.llm.base import Engine, Generation
from rag.llm.mlx import MlxEngine, load_mlx_engine
from rag.qa.prompts import build_messages
from rag.records import Passage

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
QUESTION = "Which command promotes the standby database, and who must approve a failover?"


def rag_prompt(engine: Engine, tokens: int) -> list[int]:
    """The chat prompt `rag ask` would build with sample passages, about `tokens` long."""
    paragraphs = []
    for path in sorted(SAMPLES.glob("*.md")) + sorted(SAMPLES.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        paragraphs += [(path.name, p.strip()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    passages: list[Passage] = []
    ids = engine.encode_chat(build_messages(QUESTION, passages))
    for i, (source, text) in enumerate(paragraphs):
        candidate = [*passages, Passage(f"c{i}", source, None, "", text, 1.0)]
        longer = engine.encode_chat(build_messages(QUESTION, candidate))
        if len(longer) > tokens:
            break
        passages, ids = candidate, longer
    return ids


class Timed:
    """Arrival times of one request's tokens: prefill and decode tokens/s from them."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.start = time.perf_counter()
        self.times: list[float] = []

    def token(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / (self.times[0] - self.start)

    @property
    def decode_tps(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def run_raw(engine: MlxEngine, ids: list[int], answer_tokens: int) -> tuple[Timed, list[int]]:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    timed = Timed(len(ids))
    tokens = []
    for r in stream_generate(
        engine.model,
        engine.tokenizer,
        ids,
        max_tokens=answer_tokens,
        sampler=make_sampler(temp=0.0),
        prefill_step_size=engine.prefill_step_tokens,
    ):
        timed.token()
        tokens.append(r.token)
    return timed, tokens


class Rates:
    """Prefill and decode tokens/s of one request through the engine, from its Generation.

    The engine times the same events Timed does (its first and last token), from the moment
    `stream` is called.
    """

    def __init__(self, gen: Generation):
        self.prefill_tps = (gen.prompt_tokens - gen.cached_tokens) / gen.ttft_s
        self.decode_tps = gen.tokens_per_s


class Mean:
    """The average rates of several runs, and the CPU seconds each run took."""

    def __init__(self, runs: list[Any]):
        self.runs = runs
        self.prefill_tps = sum(r.prefill_tps for r in runs) / len(runs)
        self.decode_tps = sum(r.decode_tps for r in runs) / len(runs)
        self.cpu_s = sum(r.cpu_s for r in runs) / len(runs)

    def each(self) -> str:
        return ", ".join(f"{r.prefill_tps:.2f}/{r.decode_tps:.2f}" for r in self.runs)


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads (MLX's stream threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def palindrome(runs: dict[str, Callable[[], Any]]) -> dict[str, Mean]:
    """Run each once in order, then once in reverse order; the mean rates of each.

    Each run's CPU seconds are kept too: unlike its wall time, they do not grow when other
    processes take the CPU, so they show what a layer costs on a shared machine.
    """
    results: dict[str, list[Any]] = {name: [] for name in runs}
    order = [*runs, *reversed(runs)]
    for name in order:
        before = cpu_seconds()
        rates = runs[name]()
        rates.cpu_s = cpu_seconds() - before
        results[name].append(rates)
    return {name: Mean(r) for name, r in results.items()}


def run_ours(engine: Engine, ids: list[int], answer_tokens: int) -> tuple[Rates, Generation]:
    final = None
    for item in engine.stream(
        ids, max_tokens=answer_tokens, context_tokens=len(ids) + answer_tokens, stop=()
    ):
        if isinstance(item, Generation):
            final = item
    assert final is not None
    return Rates(final), final


def concurrent(calls: list[Callable[[], Any]]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def work(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--llamacpp-only", action="store_true", help="sections 4 and 6 alone")
    parser.add_argument(
        "--engines-only", action="store_true", help="sections 1, 4, 5 and 6: the engines"
    )
    args = parser.parse_args()
    if args.llamacpp_only:
        llamacpp_vs_raw(args.prompt_tokens, args.answer_tokens)
        default_model_vs_plan(args.answer_tokens)
        return

    import mlx.core as mx

    from rag.llm.cputune import cpu_shards, shard_matmuls, unshard_matmuls
    from rag.models.catalog import read_model_spec
    from rag.models.hardware import detect_hardware
    from rag.models.planner import peak_bytes

    backend = detect_hardware().backend
    t0 = time.perf_counter()
    engine = load_mlx_engine(LlmSettings(model="bundled"))
    load_s = time.perf_counter() - t0
    ids = rag_prompt(engine, args.prompt_tokens)
    n = args.answer_tokens
    print(
        f"model {engine.name} on {mx.default_device()} ({backend}, {cpu_shards()} cores), "
        f"loaded in {load_s:.1f} s; prompt {len(ids)} tokens, answer {n} tokens, greedy"
    )

    # Each comparison runs palindromically (A B B A, A B C C B A) and averages, so a load
    # that drifts linearly during the run weighs the same on every side.

    # 1. ours vs raw mlx-lm, same model, same prompt, both with a full prefill.
    def raw_run() -> Any:
        rates, tokens = run_raw(engine, ids, n)
        raw_tokens.append(tokens)
        return rates

    def ours_run(on: MlxEngine) -> Rates:
        on.prefixes.clear()
        rates, gen = run_ours(on, ids, n)
        gens.append(gen)
        return rates

    raw_tokens: list[list[int]] = []
    gens: list[Generation] = []
    first = palindrome({"raw": raw_run, "ours": lambda: ours_run(engine)})
    raw, ours = first["raw"], first["ours"]
    ours_gen = gens[0]
    predicted = peak_bytes(read_model_spec("bundled"), backend, len(ids), n)
    same = all(t[: len(ours_gen.token_ids)] == list(ours_gen.token_ids) for t in raw_tokens)
    print("\n1. our engine vs raw mlx_lm.stream_generate (same loaded model), 2 runs each")
    print(f"   {'':22} {'prefill tok/s':>14} {'decode tok/s':>13}")
    print(f"   {'mlx_lm.stream_generate':22} {raw.prefill_tps:14.2f} {raw.decode_tps:13.2f}")
    print(f"   {'rag MlxEngine.stream':22} {ours.prefill_tps:14.2f} {ours.decode_tps:13.2f}")
    print(
        f"   ratio ours/raw: prefill {ours.prefill_tps / raw.prefill_tps:.3f}, "
        f"decode {ours.decode_tps / raw.decode_tps:.3f} (target >= 0.95); same tokens: {same}"
    )
    print(
        f"   each run (prefill/decode tok/s): raw {raw.each()}; ours {ours.each()}\n"
        f"   CPU seconds per request: raw {raw.cpu_s:.1f}, ours {ours.cpu_s:.1f} "
        f"(raw/ours {raw.cpu_s / ours.cpu_s:.3f})"
    )
    print(
        f"   peak memory of the request {ours_gen.peak_memory_bytes / 2**20:.1f} MiB, planner "
        f"predicted {predicted / 2**20:.1f} MiB "
        f"({ours_gen.peak_memory_bytes / predicted - 1:+.1%})"
    )

    if not args.engines_only:  # sections 2 and 3
        # 2. the CPU tuning: tuned, fp32 scales alone, untuned load.
        print("\n2. CPU backend tuning (rag.llm.cputune), same prompt, 2 runs each")
        if backend == "cpu":
            untuned_engine = load_mlx_engine(LlmSettings(model="bundled"), tune=False)

            def fp32_run() -> Rates:
                unshard_matmuls(engine.model)
                try:
                    return ours_run(engine)
                finally:
                    shard_matmuls(engine.model, cpu_shards())

            second = palindrome(
                {
                    "tuned": lambda: ours_run(engine),
                    "fp32": fp32_run,
                    "untuned": lambda: ours_run(untuned_engine),
                }
            )
            del untuned_engine
            tuned, fp32, untuned = second["tuned"], second["fp32"], second["untuned"]
            for name, rates in (
                (f"tuned: fp32 + matmuls on {cpu_shards()} cores", tuned),
                ("fp32 scales only", fp32),
                ("untuned load", untuned),
            ):
                print(
                    f"   {name:32} prefill {rates.prefill_tps:6.2f} tok/s  "
                    f"decode {rates.decode_tps:6.2f}  ({rates.each()}; {rates.cpu_s:.1f} CPU s)"
                )
            print(
                "   speed-up tuned/untuned: "
                f"prefill {tuned.prefill_tps / untuned.prefill_tps:.2f}x, decode "
                f"{tuned.decode_tps / untuned.decode_tps:.2f}x; from the split alone: "
                f"prefill {tuned.prefill_tps / fp32.prefill_tps:.2f}x, "
                f"decode {tuned.decode_tps / fp32.decode_tps:.2f}x"
            )
        else:
            print(f"   (no CPU tuning on the {backend} backend)")

        # 3. N sequential requests against N at once; the system prompt's KV is cached for both.
        k = args.requests
        engine.encode_chat(build_messages(QUESTION, []))  # registers the system-prompt prefix
        run_ours(engine, ids, 1)  # and fills it, outside the timings
        t = time.perf_counter()
        sequential = [run_ours(engine, ids, n)[1] for _ in range(k)]
        sequential_s = time.perf_counter() - t
        engine.start_batching(k)
        try:
            t = time.perf_counter()
            batched = concurrent([lambda: run_ours(engine, ids, n)[1] for _ in range(k)])
            batched_s = time.perf_counter() - t
        finally:
            engine.stop_batching()

        def total(gens: list[Generation]) -> tuple[int, int]:
            return sum(g.prompt_tokens - g.cached_tokens for g in gens), sum(
                g.completion_tokens for g in gens
            )

        print(f"\n3. {k} requests one after another vs {k} at once (continuous batching)")
        for name, gens, wall in (
            ("sequential", sequential, sequential_s),
            ("batched", batched, batched_s),
        ):
            prefilled, generated = total(gens)
            ttft = sorted(g.ttft_s for g in gens)
            print(
                f"   {name:10} {wall:7.1f} s  {(prefilled + generated) / wall:6.2f} tok/s all, "
                f"{generated / wall:5.2f} generated tok/s; TTFT first {ttft[0]:.1f} s, "
                f"last {ttft[-1]:.1f} s; {gens[0].cached_tokens} prompt tokens cached"
            )
        same = all(b.token_ids == s.token_ids for b, s in zip(batched, sequential, strict=True))
        print(
            f"   throughput batched/sequential: {sequential_s / batched_s:.2f}x "
            f"(target >= 2x on a GPU backend); batched tokens equal sequential: {same}"
        )
    llama = llamacpp_vs_raw(args.prompt_tokens, args.answer_tokens)
    if llama is not None:
        print("\n5. llama.cpp vs MLX's CPU backend, rag's engines, same GGUF and prompt")
        print(
            f"   prefill {llama.prefill_tps:.1f} vs {ours.prefill_tps:.1f} tok/s: "
            f"{llama.prefill_tps / ours.prefill_tps:.1f}x; decode {llama.decode_tps:.1f} vs "
            f"{ours.decode_tps:.1f} tok/s: {llama.decode_tps / ours.decode_tps:.1f}x"
        )
    default_model_vs_plan(args.answer_tokens)


def default_model_vs_plan(answer_tokens: int) -> None:
    """6. The model `auto` picks here: its measured speed beside the planner's prediction."""
    from rag.config import load_settings
    from rag.llm.choice import resolve_model, with_model
    from rag.llm.load import load_engine
    from rag.llm.probe import speed_for
    from rag.models.catalog import read_model_spec
    from rag.models.hardware import resolve_hardware
    from rag.models.planner import decode_tokens_per_s, ttft_s

    settings = load_settings()
    settings = with_model(settings, resolve_model(settings))
    llm = settings.llm
    print(f"\n6. the default model ({llm.model}, llm.engine = {llm.engine!r}) vs the plan")
    hardware = resolve_hardware(settings.hardware)
    speed = speed_for(settings, hardware)
    spec = read_model_spec(llm.model)
    t0 = time.perf_counter()
    engine = load_engine(llm, context_tokens=llm.typical_prompt_tokens + answer_tokens + 256)
    load_s = time.perf_counter() - t0
    ids = rag_prompt(engine, llm.typical_prompt_tokens)
    engine.prefixes.clear()
    _, gen = run_ours(engine, ids, answer_tokens)
    source = speed.source if speed else "no speed known"
    print(
        f"   {engine.info.kind} on {engine.info.backend}, loaded in {load_s:.1f} s; prompt "
        f"{len(ids)} tokens, answer {gen.completion_tokens} tokens; speed {source}"
    )
    # Predicted for this very prompt, as `rag plan` predicts for llm.typical_prompt_tokens.
    rows = [
        ("time to first token, s", gen.ttft_s, ttft_s(spec, speed, len(ids)) if speed else None),
        (
            "decode tokens/s",
            gen.tokens_per_s,
            decode_tokens_per_s(spec, hardware, len(ids), speed=speed),
        ),
    ]
    for label, measured, predicted in rows:
        if not predicted:
            print(f"   {label:24} measured {measured:8.2f}  (no prediction)")
            continue
        off = measured / predicted - 1
        verdict = "within 25%" if abs(off) <= 0.25 else "OFF by more than 25%"
        print(
            f"   {label:24} measured {measured:8.2f}  predicted {predicted:8.2f}  "
            f"({off:+.0%}: {verdict})"
        )


def llamacpp_vs_raw(prompt_tokens: int, answer_tokens: int) -> Mean | None:
    """4. rag's llama.cpp engine against raw llama-cpp-python on the same Llama object."""
    import importlib.util

    print("\n4. rag LlamaCppEngine.stream vs raw llama-cpp-python Llama.generate, 2 runs each")
    if importlib.util.find_spec("llama_cpp") is None:
        print("   (llama-cpp-python is not installed: `make install` builds it)")
        return None
    from rag.llm.llamacpp import load_llamacpp_engine

    t0 = time.perf_counter()
    engine = load_llamacpp_engine(LlmSettings(engine="llamacpp", model="bundled"))
    load_s = time.perf_counter() - t0
    ids = rag_prompt(engine, prompt_tokens)
    n = answer_tokens
    llama = engine.llama
    print(
        f"   {engine.name}, {llama.n_threads} threads, n_ctx {llama.n_ctx()}, loaded in "
        f"{load_s:.1f} s; prompt {len(ids)} tokens, answer {n} tokens, greedy"
    )
    raw_tokens: list[list[int]] = []
    gens: list[Generation] = []

    def raw_run() -> Timed:
        engine.reset()  # no KV kept: a full prefill, as ours gets
        timed, tokens = Timed(len(ids)), []
        for token in llama.generate(ids, temp=0.0, reset=True):
            timed.token()
            tokens.append(token)
            if len(tokens) == n:
                break
        raw_tokens.append(tokens)
        return timed

    def ours_run() -> Rates:
        engine.prefixes.clear()
        engine.reset()
        rates, gen = run_ours(engine, ids, n)
        gens.append(gen)
        return rates

    runs = palindrome({"raw": raw_run, "ours": ours_run})
    raw, ours = runs["raw"], runs["ours"]
    same = all(t[: len(g.token_ids)] == list(g.token_ids) for t in raw_tokens for g in gens)
    print(f"   {'':26} {'prefill tok/s':>14} {'decode tok/s':>13}")
    print(f"   {'llama-cpp-python generate':26} {raw.prefill_tps:14.2f} {raw.decode_tps:13.2f}")
    print(f"   {'rag LlamaCppEngine.stream':26} {ours.prefill_tps:14.2f} {ours.decode_tps:13.2f}")
    print(
        f"   ratio ours/raw: prefill {ours.prefill_tps / raw.prefill_tps:.3f}, "
        f"decode {ours.decode_tps / raw.decode_tps:.3f} (target >= 0.95); same tokens: {same}"
    )
    print(
        f"   each run (prefill/decode tok/s): raw {raw.each()}; ours {ours.each()}\n"
        f"   CPU seconds per request: raw {raw.cpu_s:.1f}, ours {ours.cpu_s:.1f}; "
        f"process RSS after the request {gens[-1].peak_memory_bytes / 2**20:.0f} MiB"
    )
    return ours


if __name__ == "__main__":
    main()
