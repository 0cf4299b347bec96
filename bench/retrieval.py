"""Retrieval quality and latency: vector-only, BM25-only and rag's hybrid, and "not found".

    python bench/retrieval.py [--sizes 10000,100000] [--sets debian-faq,samples,foldoc,...]
                              [--tune] [--calibrate] [--conversation] [--rerank N]
                              [--index-cache DIR | --fresh]

In one run: the Debian FAQ eval set (bench/build_debian_faq_eval.py), the FOLDOC set
(bench/build_foldoc_eval.py: a seeded sample of the computing dictionary, questions with
one right answer each), the GNU Coding Standards set (bench/build_gnu_standards_eval.py:
one 90-page PDF, questions paraphrased away from the manual's words, each answered on one
page, and on-topic questions it does not answer) and samples/questions.jsonl are ingested
with the real pipeline (once: the indexes are kept under --index-cache, keyed by the
corpus, the model and the ingest code; the corpora are downloaded with apt-get into
~/.cache/rag-bench) and asked with the three retrievers, each shaped the same way
(neighbours merged, per-document cap): hit@1, hit@5, MRR, by kind of question, and the
"not found" operating point (unanswerable refused / answerable refused) at the configured
min_score and word_weight. Then search latency p50/p95 at each size (`--sizes ""` skips
it). The large tables hold the FAQ's real chunks plus generated ones: real FAQ text windows
with vectors made from the FAQ chunks' real embeddings plus noise (cosine ~0.75 to their
origin, so the vector index sees clustered data as in real use; pure random vectors defeat
any ANN index). Embedding 100k chunks on 2 cores would take hours; quality numbers come
from the real eval. The vector index is built by Store.maintain exactly as after an ingest
(HNSW once the table holds retrieval.vector_index_rows chunks). Latency is the store search
(both legs and fusion) with the query embedded beforehand; embedding time is separate.

Options measure the choices made in rag/qa/retrieval.py, rag/qa/conversation.py, rag/qa/rerank.py:
--tune (fusion grid, against reciprocal-rank fusion) and --calibrate (the "not found"
rule), both on each question's two legs fetched once and re-fused in Python, marking the
sets held out of the choice; --conversation (follow-up rewriting: off, rules, and the
LLM), --rerank N (LLM pointwise reranking on N questions).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.build_debian_faq_eval import DEFAULT_CACHE  # noqa: E402
from bench.build_debian_faq_eval import build as build_faq_eval  # noqa: E402
from bench.build_foldoc_eval import build as build_foldoc_eval  # noqa: E402
from bench.build_gnu_standards_eval import build as build_gnu_eval  # noqa: E402
from bench.search_latency import latency  # noqa: E402
from rag.config import ChunkingSettings, RetrievalSettings  # noqa: E402
from rag.embed.embedder import Embedder  # noqa: E402
from rag.index.store import Store, open_store  # noqa: E402
from rag.ops.evaluation import DEPTH, EvalQuestion, first_hit, load_questions  # noqa: E402
from rag.qa.retrieval import (  # noqa: E402
    Retriever,
    diversify,
    fuse,
    fuse_scores,
    is_relevant,
    text_share,
    word_coverage,
)

FAQ = "debian-faq"
SAMPLES = "default"
FOLDOC = "foldoc"
GNU = "gnu-standards"
SETS = ("debian-faq", "samples", "foldoc", "gnu-standards")


@dataclasses.dataclass
class EvalSet:
    name: str
    store: Store
    collection: str
    questions: list[EvalQuestion]
    kinds: list[str]
    # The question file and the index's data dir, for `rag eval` on the set.
    questions_path: Path
    data_dir: Path


def ingest(data_dir: Path, paths: list[Path], collection: str, embedder: Embedder) -> Store:
    from ingest.run import run_ingest

    store = open_store(data_dir, embedder.name, embedder.dim)
    report = run_ingest(
        paths, collection=collection, chunking=ChunkingSettings(), embedder=embedder, store=store
    )
    assert not report.failed, report.failed
    return store


def index_key(paths: list[Path], embedder: Embedder) -> str:
    """What an eval index depends on: the corpus files' bytes, the embedding model, the
    chunking defaults and the ingest code; any change makes a new index."""
    digest = hashlib.sha256(f"{embedder.name} {ChunkingSettings()}".encode())
    files = sorted(f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    for f in [*files, *sorted((ROOT / "ingest").glob("*.py"))]:
        digest.update(str(f).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def cached_index(
    cache: Path | None,
    scratch: Path,
    name: str,
    paths: list[Path],
    collection: str,
    embedder: Embedder,
) -> tuple[Store, bool, Path]:
    """The eval set's index, ingested once into `cache` (reused while nothing it depends on
    changed; embedding a corpus takes minutes on 2 cores) or into `scratch` without one;
    with whether it was reused and its data dir."""
    if cache is None:
        return ingest(scratch / name, paths, collection, embedder), False, scratch / name
    data_dir = cache / f"{name}-{index_key(paths, embedder)}"
    if (data_dir / ".complete").exists():
        return open_store(data_dir, embedder.name, embedder.dim), True, data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    store = ingest(data_dir, paths, collection, embedder)
    (data_dir / ".complete").touch()
    return store, False, data_dir


def load_sets(
    wanted: list[str], cache: Path | None, scratch: Path, embedder: Embedder
) -> list[EvalSet]:
    """The eval sets named in `wanted` (of SETS), in SETS order, each with its index."""
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
        elif name == "gnu-standards":
            gnu_dir, path = build_gnu_eval()
            collection, paths = GNU, sorted(gnu_dir.glob("*.pdf"))
        else:
            collection, paths = SAMPLES, [Path("samples")]
            path = ROOT / "samples" / "questions.jsonl"
        started = time.perf_counter()
        store, reused, data_dir = cached_index(cache, scratch, name, paths, collection, embedder)
        print(
            f"{'reused' if reused else 'ingested'} {name}: {len(paths)} files, "
            f"{store.count_chunks(collection)} chunks in {time.perf_counter() - started:.0f} s"
        )
        questions = load_questions(path)
        kinds = kinds_of(path, questions)
        sets.append(EvalSet(name, store, collection, questions, kinds, path, data_dir))
    return sets


def kinds_of(path: Path, questions: list[EvalQuestion]) -> list[str]:
    kinds = []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for line, q in zip(lines, questions, strict=True):
        kind = json.loads(line).get("kind")
        kinds.append(kind or ("follow-up" if q.history else "question"))
    return kinds


def standalone(q: EvalQuestion, rewrite: str) -> str:
    from rag.qa.conversation import rule_rewrite

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


MODES = ("vector", "keyword", "hybrid")
LABELS = {"vector": "vector-only", "keyword": "BM25-only", "hybrid": "hybrid (rag)"}


# Query embeddings by text: each query is embedded once per run, whichever retriever,
# section or option asks (embedding, not search, is most of the time on a busy CPU).
_VECTORS: dict[str, Any] = {}


def embedded(embedder: Embedder, query: str) -> Any:
    if query not in _VECTORS:
        _VECTORS[query] = embedder.embed_query(query)
    return _VECTORS[query]


def ranked(es: EvalSet, retriever: Retriever, query: str, mode: str, k: int = DEPTH) -> list[Any]:
    vector = embedded(retriever.embedder, query)
    return retriever.search_by(query, vector, es.collection, k, mode)


def quality(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings) -> None:
    print("== Retrieval quality (answerable questions; hit = right file/page and answer text)")
    for es in sets:
        rows: dict[str, dict[str, list[int | None]]] = {}
        retriever = Retriever(es.store, embedder, settings)
        for mode in MODES:
            by_kind: dict[str, list[int | None]] = {}
            for q, kind in zip(es.questions, es.kinds, strict=True):
                if q.answerable:
                    found = ranked(es, retriever, standalone(q, settings.rewrite), mode)
                    by_kind.setdefault(kind, []).append(first_hit(q, found))
            rows[mode] = by_kind
        kinds = sorted(rows["hybrid"])
        total = sum(len(rows["hybrid"][k]) for k in kinds)
        print(f"{es.name}: {total} answerable questions")
        header = f"  {'':22}{'hit@1':>7}{'hit@5':>7}{'MRR':>7}"
        header += "".join(f"  {k + ' hit@5':>18}" for k in kinds)
        print(header)
        for mode in MODES:
            every = [r for k in kinds for r in rows[mode][k]]
            m = metrics(every)
            line = f"  {LABELS[mode]:22}{100 * m['hit@1']:6.1f}%{100 * m['hit@5']:6.1f}%"
            line += f"{m['mrr']:7.3f}"
            for k in kinds:
                line += f"  {100 * metrics(rows[mode][k])['hit@5']:17.1f}%"
            print(line + f"   (n per kind: {', '.join(str(len(rows[mode][k])) for k in kinds)})")
        h = metrics([r for k in kinds for r in rows["hybrid"][k]])
        if es.name == GNU:
            print(
                f"  paraphrased questions answered in the top 1: {100 * h['hit@1']:.1f}%, "
                f"in the top 5: {100 * h['hit@5']:.1f}%"
            )
        for other in ("vector", "keyword"):
            o = metrics([r for k in kinds for r in rows[other][k]])
            worse = h["hit@1"] < o["hit@1"] or h["mrr"] < o["mrr"]
            print(
                f"  hybrid - {other}: hit@1 {100 * (h['hit@1'] - o['hit@1']):+.1f} points, "
                f"hit@5 {100 * (h['hit@5'] - o['hit@5']):+.1f} points, "
                f"MRR {h['mrr'] - o['mrr']:+.3f}" + ("   <- HYBRID LOSES" if worse else "")
            )
        refused: dict[bool, list[bool]] = {True: [], False: []}
        for q in es.questions:
            query = standalone(q, settings.rewrite)
            found = ranked(es, retriever, query, settings.mode, settings.k)
            relevant = is_relevant(found, settings.min_score, query, settings.word_weight)
            refused[q.answerable].append(not relevant)
        if refused[False]:
            print(
                f"  not found (min_score {settings.min_score}, word_weight "
                f"{settings.word_weight}): refused {100 * statistics.mean(refused[False]):.1f}% "
                f"of {len(refused[False])} unanswerable, "
                f"{100 * statistics.mean(refused[True]):.1f}% of answerable"
            )


# Sets the fusion and refusal settings were chosen on; the others are held out, to show
# that the gain carries over to a corpus the choice never saw.
TUNED_ON = (FAQ, "samples", GNU)


@dataclasses.dataclass
class Legs:
    """One question's candidates from both legs, fetched once and re-fused in Python."""

    question: EvalQuestion
    query: str
    by_vector: list[Any]
    by_text: list[tuple[Any, float]]


def legs(es: EvalSet, embedder: Embedder, depth: int = 60) -> list[Legs]:
    """Every question of the set with its vector and keyword rankings, `depth` deep."""
    out = []
    for q in es.questions:
        query = standalone(q, "rules")
        vector = embedded(embedder, query)
        out.append(
            Legs(
                q,
                query,
                es.store.search(es.collection, vector, depth),
                es.store.keyword_search(es.collection, query, depth, vector),
            )
        )
    return out


def refit(row: Legs, settings: RetrievalSettings, k: int = DEPTH) -> list[Any]:
    """What Retriever.search_by returns for the row's query under `settings`."""
    c = settings.candidates
    fused = fuse_scores(row.by_vector[:c], row.by_text[:c], text_share(row.query, settings))
    return diversify(fused, k, settings.max_per_document)


def held(name: str) -> str:
    return name if name in TUNED_ON else f"{name} (held out)"


def tune(cached: dict[str, list[Legs]], settings: RetrievalSettings) -> None:
    print(
        "== Fusion grid: hit@1 / MRR per set (candidates per leg x text_weight x "
        f"keyword_text_weight, max_per_document {settings.max_per_document}); "
        f"chosen on {', '.join(TUNED_ON)}"
    )

    def cells(ranker: Any) -> str:
        out = []
        for name, rows in cached.items():
            m = metrics([first_hit(r.question, ranker(r)) for r in rows if r.question.answerable])
            out.append(f"{held(name)} {100 * m['hit@1']:5.1f}% {m['mrr']:.3f}")
        return " | ".join(out)

    cap = settings.max_per_document
    print(
        "  reciprocal-rank fusion (30 per leg, rrf_k 60, equal weights): "
        + cells(
            lambda r: diversify(
                fuse([r.by_vector[:30], [p for p, _ in r.by_text[:30]]], [1, 1], 60), DEPTH, cap
            )
        )
    )
    for candidates in (20, 30, 50):
        for weight in (0.2, 0.3, 0.4, 0.5):
            for keyword_weight in (0.4, 0.6, 0.8):
                s = msgspec.structs.replace(
                    settings,
                    candidates=candidates,
                    text_weight=weight,
                    keyword_text_weight=keyword_weight,
                )
                chosen = s == settings
                print(
                    f"  cand {candidates:2} w {weight:.1f} kw {keyword_weight:.1f}: "
                    + cells(lambda r, s=s: refit(r, s))
                    + ("  <- config" if chosen else "")
                )


def refusal_features(cached: dict[str, list[Legs]], settings: RetrievalSettings) -> dict:
    """Per set: (answerable?, [(cosine, word coverage) of each top-k passage], all words held)."""
    out = {}
    for name, rows in cached.items():
        feats = []
        for r in rows:
            top = refit(r, settings, settings.k)
            cover = [(p.score, word_coverage(p, r.query)) for p in top]
            every = any(c == 1.0 for _, c in cover)
            feats.append((r.question.answerable, cover, every))
        out[name] = feats
    return out


def operating_point(feats: list, min_score: float, word_weight: float) -> tuple[float, float]:
    """(share of unanswerable questions refused, share of answerable ones refused)."""

    def refused(cover: list, every: bool) -> bool:
        return not every and not any(c + word_weight * w >= min_score for c, w in cover)

    no = [refused(c, e) for a, c, e in feats if not a]
    yes = [refused(c, e) for a, c, e in feats if a]
    return sum(no) / max(1, len(no)), sum(yes) / max(1, len(yes))


def calibrate(cached: dict[str, list[Legs]], settings: RetrievalSettings) -> None:
    print(
        "== 'Not found': refused unanswerable / wrongly refused answerable, per set, by "
        "min_score x word_weight (evidence = cosine + word_weight x share of the question's "
        "words; a passage holding all of them is kept)"
    )
    feats = refusal_features(cached, settings)
    for word_weight in (0.0, 0.2, 0.3, 0.4, 0.5):
        for t in [x / 100 for x in range(30, 76, 5)]:
            cells = []
            for name, f in feats.items():
                refused, wrong = operating_point(f, t, word_weight)
                cells.append(f"{held(name)} {100 * refused:5.1f}% / {100 * wrong:4.1f}%")
            chosen = abs(t - settings.min_score) < 1e-9 and word_weight == settings.word_weight
            mark = "  <- config" if chosen else ""
            print(f"  w {word_weight:.1f} {t:.2f}: " + " | ".join(cells) + mark)


def conversation(sets: list[EvalSet], embedder: Embedder, settings: RetrievalSettings, llm: bool):
    from rag.qa.conversation import llm_rewrite, rule_rewrite

    print("== Follow-up questions: hit@5 and hit@1 by rewrite (history = the earlier question)")
    engine = None
    if llm:
        from rag.config import LlmSettings
        from rag.llm.load import load_engine

        engine = load_engine(LlmSettings(model="bundled"))
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
    from rag.llm.load import load_engine
    from rag.qa.rerank import llm_rerank

    print(f"== LLM pointwise rerank of the top {settings.rerank_top} ({n} questions per set)")
    engine = load_engine(LlmSettings(model="bundled"))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sets", default=",".join(SETS), help="eval sets, comma-separated")
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--conversation", action="store_true")
    parser.add_argument("--conversation-llm", action="store_true", help="also the LLM rewrite")
    parser.add_argument("--rerank", type=int, default=0, metavar="N")
    parser.add_argument(
        "--index-cache",
        type=Path,
        default=DEFAULT_CACHE / "indexes",
        help="where eval indexes are kept between runs (keyed by corpus, model and code)",
    )
    parser.add_argument("--fresh", action="store_true", help="ingest into a temporary dir")
    args = parser.parse_args()
    os.chdir(ROOT)  # sample sources are named samples/... as users see them

    from rag.config import EmbeddingSettings
    from rag.embed.embedder import load_embedder

    settings = RetrievalSettings()
    embedder = load_embedder(EmbeddingSettings())
    wanted = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not wanted or set(wanted) - set(SETS):
        parser.error(f"--sets takes some of {', '.join(SETS)}")
    cache = None if args.fresh else args.index_cache
    with tempfile.TemporaryDirectory() as tmp:
        sets = load_sets(wanted, cache, Path(tmp), embedder)
        quality(sets, embedder, settings)
        if args.tune or args.calibrate:
            cached = {es.name: legs(es, embedder) for es in sets}
            if args.tune:
                tune(cached, settings)
            if args.calibrate:
                calibrate(cached, RetrievalSettings())
        if args.conversation or args.conversation_llm:
            conversation(sets, embedder, settings, args.conversation_llm)
        if args.rerank:
            rerank(sets, embedder, settings, args.rerank)
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        if sizes:
            # The large tables are built from the first set's real chunks (the FAQ's unless
            # --sets leaves it out).
            first = sets[0]
            questions = [q.question for q in first.questions]
            latency(sizes, first.store, questions, embedder, RetrievalSettings())


if __name__ == "__main__":
    main()
