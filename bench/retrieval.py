"""Retrieval quality and latency, vector-only top-k (what most peers ship) against rag's hybrid.

    python bench/retrieval.py [--sizes 10000,100000] [--sets debian-faq,samples,foldoc]
                              [--tune] [--calibrate] [--conversation] [--rerank N]

In one run: the Debian FAQ eval set (bench/build_debian_faq_eval.py), the FOLDOC set
(bench/build_foldoc_eval.py: a seeded sample of the computing dictionary, questions with
one right answer each; both corpora are downloaded with apt-get into ~/.cache/rag-bench)
and samples/questions.jsonl are ingested into temporary indexes with the real pipeline and
asked with both retrievers (hit@1, hit@5, MRR, by kind of question); then search latency
p50/p95 at each size (`--sizes ""` skips it). The large
tables hold the FAQ's real chunks plus generated ones: real FAQ text windows with vectors
made from the FAQ chunks' real embeddings plus noise (cosine ~0.75 to their origin, so the
vector index sees clustered data as in real use; pure random vectors defeat any ANN
index). Embedding 100k chunks on 2 cores would take hours; quality numbers come from the
real eval. The vector index is built by Store.maintain exactly as after an ingest (HNSW
once the table holds retrieval.vector_index_rows chunks). Latency is the store search
(both legs and fusion) with the query embedded beforehand; embedding time is separate.

Options measure the choices made in rag/retrieval.py, rag/conversation.py, rag/rerank.py:
--tune (fusion grid), --calibrate (the "not found" threshold), --conversation (follow-up
rewriting: off, rules, and the LLM), --rerank N (LLM pointwise reranking on N questions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.build_debian_faq_eval import build as build_faq_eval  # noqa: E402
from bench.build_foldoc_eval import build as build_foldoc_eval  # noqa: E402
from rag.chunkrows import chunk_schema  # noqa: E402
from rag.config import ChunkingSettings, RetrievalSettings  # noqa: E402
from rag.embedder import Embedder  # noqa: E402
from rag.evaluation import DEPTH, EvalQuestion, first_hit, load_questions  # noqa: E402
from rag.retrieval import Retriever, fuse, is_relevant  # noqa: E402
from rag.store import Store, open_store  # noqa: E402

FAQ = "debian-faq"
SAMPLES = "default"
FOLDOC = "foldoc"
SETS = ("debian-faq", "samples", "foldoc")


@dataclasses.dataclass
class EvalSet:
    name: str
    store: Store
    collection: str
    questions: list[EvalQuestion]
    kinds: list[str]


def ingest(data_dir: Path, paths: list[Path], collection: str, embedder: Embedder) -> Store:
    from ingest.pipeline import run_ingest

    store = open_store(data_dir, embedder.name, embedder.dim)
    report = run_ingest(
        paths, collection=collection, chunking=ChunkingSettings(), embedder=embedder, store=store
    )
    assert not report.failed, report.failed
    return store


def kinds_of(path: Path, questions: list[EvalQuestion]) -> list[str]:
    kinds = []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for line, q in zip(lines, questions, strict=True):
        kind = json.loads(line).get("kind")
        kinds.append(kind or ("follow-up" if q.history else "question"))
    return kinds


def standalone(q: EvalQuestion, rewrite: str) -> str:
    from rag.conversation import rule_rewrite

    if rewrite == "rules":
        return rule_rewrite(q.question, q.turns()) or q.question
    return q.question


def metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks) or 1
    return {
        "hit@1": sum(r == 1 for r in ranks) / n,
        "hit@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
    }


def quality(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings) -> None:
    print("== Retrieval quality (answerable questions; hit = right file/page and answer text)")
    for es in sets:
        rows: dict[str, dict[str, list[int | None]]] = {}
        for mode in ("vector", "hybrid"):
            retriever = Retriever(es.store, embedder, dataclasses.replace(settings, mode=mode))
            by_kind: dict[str, list[int | None]] = {}
            for q, kind in zip(es.questions, es.kinds, strict=True):
                if q.answerable:
                    found = retriever.search(standalone(q, settings.rewrite), es.collection, DEPTH)
                    by_kind.setdefault(kind, []).append(first_hit(q, found))
            rows[mode] = by_kind
        kinds = sorted(rows["hybrid"])
        total = sum(len(rows["hybrid"][k]) for k in kinds)
        print(f"{es.name}: {total} answerable questions")
        header = f"  {'':22}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}"
        header += "".join(f"  {k + ' hit@5':>18}" for k in kinds)
        print(header)
        labels = {"vector": "vector-only top-k", "hybrid": "hybrid (rag)"}
        for mode in ("vector", "hybrid"):
            every = [r for k in kinds for r in rows[mode][k]]
            m = metrics(every)
            line = f"  {labels[mode]:22}{100 * m['hit@1']:6.1f}%{100 * m['hit@5']:6.1f}%"
            line += f"{m['mrr']:7.3f}"
            for k in kinds:
                line += f"  {100 * metrics(rows[mode][k])['hit@5']:17.1f}%"
            print(line + f"   (n per kind: {', '.join(str(len(rows[mode][k])) for k in kinds)})")
        v = metrics([r for k in kinds for r in rows["vector"][k]])
        h = metrics([r for k in kinds for r in rows["hybrid"][k]])
        print(
            f"  hybrid - vector: hit@1 {100 * (h['hit@1'] - v['hit@1']):+.1f} points, "
            f"hit@5 {100 * (h['hit@5'] - v['hit@5']):+.1f} points, MRR {h['mrr'] - v['mrr']:+.3f}"
        )
        hard = [k for k in kinds if k not in ("title", "question")]
        if hard and len(hard) < len(kinds):
            vh = metrics([r for k in hard for r in rows["vector"][k]])
            hh = metrics([r for k in hard for r in rows["hybrid"][k]])
            print(
                f"  without the verbatim section titles ({'+'.join(hard)}): hit@5 "
                f"{100 * vh['hit@5']:.1f}% -> {100 * hh['hit@5']:.1f}% "
                f"({100 * (hh['hit@5'] - vh['hit@5']):+.1f} points)"
            )


def legs(es: EvalSet, embedder: Embedder, depth: int = 60) -> list[tuple[EvalQuestion, Any, Any]]:
    """Each answerable question with its vector and text rankings, for offline fusion."""
    out = []
    for q in es.questions:
        if q.answerable:
            query = standalone(q, "rules")
            vector = embedder.embed_query(query)
            out.append(
                (
                    q,
                    es.store.search(es.collection, vector, depth),
                    es.store.text_search(es.collection, query, depth, vector),
                )
            )
    return out


def tune(sets: list[EvalSet], embedder: Embedder) -> None:
    print("== Fusion grid (hit@5 / MRR per set; candidates per leg x rrf_k x text_weight)")
    cached = {es.name: legs(es, embedder) for es in sets}
    for candidates in (10, 30, 60):
        for rrf_k in (10, 30, 60, 100):
            for weight in (0.5, 0.75, 1.0, 1.5, 2.0):
                cells = []
                for name, rows in cached.items():
                    ranks = [
                        first_hit(q, fuse([v[:candidates], t[:candidates]], [1.0, weight], rrf_k))
                        for q, v, t in rows
                    ]
                    m = metrics(ranks)
                    cells.append(f"{name} {100 * m['hit@5']:5.1f}% {m['mrr']:.3f}")
                print(f"  cand {candidates:2} rrf_k {rrf_k:3} w {weight:4}: " + " | ".join(cells))


def best_scores(es: EvalSet, embedder: Embedder, settings: RetrievalSettings) -> tuple[list, list]:
    retriever = Retriever(es.store, embedder, settings)
    answerable, unanswerable = [], []
    for q in es.questions:
        query = standalone(q, settings.rewrite)
        found = retriever.search(query, es.collection, settings.k)
        best = max((p.score for p in found), default=-1.0)
        # Kept whatever the threshold: a passage holds every content word of the query.
        lexical = is_relevant(found, 2.0, query)
        (answerable if q.answerable else unanswerable).append((best, lexical, q.question))
    return answerable, unanswerable


def calibrate(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings) -> None:
    print("== 'Not found' threshold: best cosine among the top-k, answerable vs unanswerable")
    scores = {es.name: best_scores(es, embedder, settings) for es in sets}
    for name, (yes, no) in scores.items():
        ys, ns = sorted(s for s, _, _ in yes), sorted(s for s, _, _ in no)
        print(
            f"  {name}: answerable min {ys[0]:.3f} p5 {ys[len(ys) // 20]:.3f} "
            f"median {statistics.median(ys):.3f}; unanswerable max {ns[-1]:.3f} "
            f"median {statistics.median(ns):.3f}"
        )
        for s, lexical, q in sorted(no, reverse=True)[:3]:
            print(f"    highest unanswerable {s:.3f}{' (all words match)' * lexical}: {q}")
        for s, lexical, q in sorted(yes)[:4]:
            print(f"    lowest answerable   {s:.3f}{' (all words match)' * lexical}: {q}")
    print(
        "  threshold: refused unanswerable / wrongly refused answerable, per set "
        "(a passage holding every content word of the query is kept at any threshold)"
    )
    for t in [x / 100 for x in range(20, 56, 5)]:
        cells = []
        for name, (yes, no) in scores.items():
            refused = sum(s < t and not lexical for s, lexical, _ in no) / len(no)
            wrong = sum(s < t and not lexical for s, lexical, _ in yes) / len(yes)
            cells.append(f"{name} {100 * refused:5.1f}% / {100 * wrong:4.1f}%")
        mark = "  <- retrieval.min_score" if abs(t - settings.min_score) < 1e-9 else ""
        print(f"  {t:.2f}: " + " | ".join(cells) + mark)


def conversation(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings, llm: bool):
    from rag.conversation import llm_rewrite, rule_rewrite

    print("== Follow-up questions: hit@5 and hit@1 by rewrite (history = the earlier question)")
    engine = None
    if llm:
        from rag.config import LlmSettings
        from rag.enginechoice import load_engine

        engine = load_engine(LlmSettings())
    for es in sets:
        follow = [q for q in es.questions if q.history]
        if not follow:
            continue
        retriever = Retriever(es.store, embedder, settings)
        ways = {"off": lambda q: None, "rules": lambda q: rule_rewrite(q.question, q.turns())}
        if engine is not None:
            ways["llm"] = lambda q: llm_rewrite(engine, q.question, q.turns())
        for way, rewrite in ways.items():
            started = time.perf_counter()
            ranks, shown = [], []
            for q in follow:
                query = rewrite(q) or q.question
                ranks.append(first_hit(q, retriever.search(query, es.collection, DEPTH)))
                shown.append(query)
            seconds = (time.perf_counter() - started) / len(follow)
            m = metrics(ranks)
            print(
                f"  {es.name} {way:5}: hit@1 {100 * m['hit@1']:5.1f}%  hit@5 "
                f"{100 * m['hit@5']:5.1f}%  ({len(follow)} follow-ups, {seconds:.2f} s each)"
            )
            if way == "llm":
                for query in shown[:4]:
                    print(f"      e.g. {query!r}")


def rerank(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings, n: int) -> None:
    from rag.config import LlmSettings
    from rag.enginechoice import load_engine
    from rag.rerank import llm_rerank

    print(f"== LLM pointwise rerank of the top {settings.rerank_top} ({n} questions per set)")
    engine = load_engine(LlmSettings())
    for es in sets:
        retriever = Retriever(es.store, embedder, settings)
        chosen = [q for q in es.questions if q.answerable][:n]
        fused, reranked, seconds = [], [], []
        for q in chosen:
            found = retriever.search(standalone(q, "rules"), es.collection, DEPTH)
            fused.append(first_hit(q, found))
            started = time.perf_counter()
            reranked.append(first_hit(q, llm_rerank(engine, q.question, found, settings)))
            seconds.append(time.perf_counter() - started)
        f, r = metrics(fused), metrics(reranked)
        print(
            f"  {es.name}: hit@1 {100 * f['hit@1']:.1f}% fused -> {100 * r['hit@1']:.1f}% "
            f"reranked; MRR {f['mrr']:.3f} -> {r['mrr']:.3f}; "
            f"{statistics.median(seconds):.1f} s per question"
        )


def synthetic_table(store: Store, source: Store, collection: str, size: int, seed: int) -> None:
    """`source`'s real chunks plus generated ones up to `size` rows, in one table."""
    import numpy as np

    from rag.chunkrows import to_arrow

    rng = np.random.default_rng(seed)
    real = source.scan(_ROW_COLUMNS)
    rows = [row for batch in real for row in batch]
    base = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    words = " ".join(r["text"] for r in rows).split()
    table = store._table(create=True)
    schema = table.schema
    batch: list[dict[str, Any]] = []
    for n in range(size):
        if n < len(rows):
            row = dict(rows[n])
        else:
            start = int(rng.integers(0, len(words) - 130))
            vector = base[int(rng.integers(0, len(base)))] + 0.05 * rng.standard_normal(
                base.shape[1]
            ).astype(np.float32)
            row = dict(rows[n % len(rows)])
            row.update(
                chunk_id=f"gen-{n}",
                doc_id=f"gen-doc-{n // 20}",
                source=f"generated/{n // 20}.txt",
                chunk_index=n % 20,
                heading="",
                text=" ".join(words[start : start + 120]),
                vector=(vector / np.linalg.norm(vector)).tolist(),
            )
        # One chunk in ten belongs to another collection, so the filter does work.
        row["collection"] = collection if n % 10 else "other"
        batch.append(row)
        if len(batch) == 10_000:
            table.add(to_arrow(batch, schema))
            batch = []
    if batch:
        table.add(to_arrow(batch, schema))


# Every stored column, vectors included: the generated rows copy real ones.
_ROW_COLUMNS = chunk_schema("", 1).names


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(
    sizes: list[int], faq: EvalSet, embedder: Embedder, settings: RetrievalSettings
) -> None:
    from lancedb.expr import col, lit

    print("== Search latency (store search, query embedded beforehand), ms")
    queries = [q.question for q in faq.questions]
    vectors = [embedder.embed_query(q) for q in queries]
    started = time.perf_counter()
    times = []
    for q in queries[:50]:
        t0 = time.perf_counter()
        embedder.embed_query(q)
        times.append(1000 * (time.perf_counter() - t0))
    print(
        f"  query embedding: p50 {percentile(times, 0.5):.1f} p95 {percentile(times, 0.95):.1f}"
        f" ({time.perf_counter() - started:.1f} s for 50)"
    )
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            store = open_store(Path(tmp), embedder.name, embedder.dim)
            store.vector_index_rows = settings.vector_index_rows
            t0 = time.perf_counter()
            synthetic_table(store, faq.store, "bench", size, seed=size)
            written = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.maintain(wrote=True)
            built = time.perf_counter() - t0
            table = store._table()
            indexes = sorted(i.name for i in table.list_indices())
            print(
                f"  {size} chunks: written in {written:.0f} s, indexes {indexes} built in "
                f"{built:.0f} s"
            )
            retriever = Retriever(store, embedder, settings)
            for mode in ("vector", "hybrid"):
                times = []
                for query, vector in zip(queries * 2, vectors * 2, strict=True):
                    t0 = time.perf_counter()
                    retriever.search_by(query, vector, "bench", settings.k, mode)
                    times.append(1000 * (time.perf_counter() - t0))
                times = times[10:]  # warm-up
                print(
                    f"    {mode:6}  p50 {percentile(times, 0.5):6.1f}  "
                    f"p95 {percentile(times, 0.95):6.1f}  ({len(times)} queries)"
                )
            if "vector_idx" in indexes:
                recall = []
                for vector in vectors[:40]:
                    exact = (
                        table.search(vector.tolist(), vector_column_name="vector")
                        .distance_type("cosine")
                        .where(col("collection") == lit("bench"), prefilter=True)
                        .bypass_vector_index()
                        .select(["chunk_id", "_distance"])
                        .limit(10)
                        .to_list()
                    )
                    ann = store.search("bench", vector, 10)
                    wanted = {r["chunk_id"] for r in exact}
                    recall.append(len(wanted & {p.chunk_id for p in ann}) / 10)
                print(f"    vector index recall@10 vs exact search: {statistics.mean(recall):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sets", default=",".join(SETS), help="eval sets, comma-separated")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--conversation", action="store_true")
    parser.add_argument("--conversation-llm", action="store_true", help="also the LLM rewrite")
    parser.add_argument("--rerank", type=int, default=0, metavar="N")
    args = parser.parse_args()
    os.chdir(ROOT)  # sample sources are named samples/... as users see them

    from rag.config import EmbeddingSettings
    from rag.embedder import load_embedder

    settings = RetrievalSettings(k=5)
    embedder = load_embedder(EmbeddingSettings())
    wanted = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not wanted or set(wanted) - set(SETS):
        parser.error(f"--sets takes some of {', '.join(SETS)}")
    with tempfile.TemporaryDirectory() as tmp:
        sets = []
        for name in SETS:
            if name not in wanted:
                continue
            if name == "debian-faq":
                faq_dir, path = build_faq_eval()
                collection, paths = FAQ, sorted(faq_dir.glob("*.en.html"))
            elif name == "foldoc":
                foldoc_dir, path = build_foldoc_eval()
                collection, paths = FOLDOC, sorted(foldoc_dir.glob("foldoc-*.md"))
            else:
                collection, paths = SAMPLES, [Path("samples")]
                path = ROOT / "samples" / "questions.jsonl"
            started = time.perf_counter()
            store = ingest(Path(tmp) / name, paths, collection, embedder)
            print(
                f"ingested {name}: {len(paths)} files, {store.count_chunks(collection)} chunks "
                f"in {time.perf_counter() - started:.0f} s"
            )
            questions = load_questions(path)
            sets.append(EvalSet(name, store, collection, questions, kinds_of(path, questions)))
        quality(sets, embedder, settings)
        if args.tune:
            tune(sets, embedder)
        if args.calibrate:
            calibrate(sets, embedder, RetrievalSettings())
        if args.conversation or args.conversation_llm:
            conversation(sets, embedder, settings, args.conversation_llm)
        if args.rerank:
            rerank(sets, embedder, settings, args.rerank)
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if sizes:
            # The large tables are built from the first set's real chunks (the FAQ's unless
            # --sets leaves it out).
            latency(sizes, sets[0], embedder, RetrievalSettings())


if __name__ == "__main__":
    main()
