"""Answer a question from the documents: retrieve, pack into the context, generate, cite."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rag.config import RetrievalSettings, Settings
from rag.embed.embedder import Embedder, load_embedder
from rag.errors import UsageError
from rag.index.store import Store, open_index
from rag.llm.base import Engine, Generation
from rag.llm.choice import resolve_model, with_model
from rag.llm.load import choose_engine, load_engine
from rag.llm.sizing import plan_configured
from rag.models.hardware import resolve_hardware
from rag.models.planner import require_fit
from rag.qa.citations import MarkerFilter, citations_for, clean_markers
from rag.qa.conversation import llm_rewrite, rule_rewrite
from rag.qa.modelcheck import needs_model_check, sources_answer_logit
from rag.qa.packing import Packing, merge_adjacent, pack
from rag.qa.prompts import Message, build_messages
from rag.qa.rerank import llm_rerank
from rag.qa.retrieval import Retriever, is_relevant
from rag.qa.support import check_answer
from rag.records import Answer, Delta, Passage, Usage

if TYPE_CHECKING:
    from rag.models.planner import Plan

NOTHING_FOUND = "Nothing in your documents matches this question; ingest documents first."
# Retrieval found passages, but none close enough to the question (retrieval.min_score).
NOT_FOUND = "Not found in your documents."


@dataclass
class Answerer:
    """Everything a question needs, loaded once and shared by the CLI and the web service."""

    store: Store
    embedder: Embedder
    engine: Engine
    context_tokens: int
    answer_tokens: int
    temperature: float = 0.0
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    # The memory plan the local model runs under; None when a remote server generates.
    plan: Plan | None = None

    def __post_init__(self) -> None:
        self.retriever = Retriever(self.store, self.embedder, self.retrieval)

    @property
    def planned_mlx_bytes(self) -> int:
        """What the plan says MLX will hold at most (weights, KV cache, prefill)."""
        return self.plan.peak_bytes - self.plan.embedder_bytes if self.plan else 0

    def warm_up(self) -> None:
        """Compute the KV of the grounded prompt's fixed start (the system prompt) now, so
        the first question pays only for its own tokens (a server that generates for us
        keeps its own prompt cache)."""
        if self.plan is None:
            return
        ids = self.engine.encode_chat(build_messages("?", []))
        for _ in self.engine.stream(ids, max_tokens=1, context_tokens=self.context_tokens):
            pass

    def concurrency(self, configured: int) -> int:
        """llm.concurrency, capped by how many full contexts the memory plan fits at once
        and by what the engine can run together (llama.cpp: one).

        A remote server holds its own KV caches and plans its own batches.
        """
        planned = configured
        if self.plan is not None:
            planned = max(1, min(configured, self.plan.max_concurrent_sequences))
        most = self.engine.info.max_concurrency
        return min(planned, most) if most else planned

    def search(self, query: str, collection: str, k: int) -> list[Passage]:
        """The k best passages for `query` (hybrid or vector, as retrieval.mode says)."""
        return self.retriever.search(query, collection, k)

    def standalone_query(self, question: str, history: Sequence[Message]) -> str | None:
        """The query to search for a follow-up question; None when it stands alone."""
        if not history or self.retrieval.rewrite == "off":
            return None
        if self.retrieval.rewrite == "llm":
            return llm_rewrite(self.engine, question, history)
        return rule_rewrite(question, history)

    def pack(
        self,
        question: str,
        passages: list[Passage],
        history: Sequence[Message] = (),
        reserve_tokens: int | None = None,
    ) -> Packing:
        """The prompt with as many passages as fit, adjacent chunks merged, lowest-ranked
        dropped first.

        Down to one passage; then the oldest turns of the history go, then the last passage
        (rag.qa.packing.pack); a question that does not fit alone is refused.
        """
        reserve = self.answer_tokens if reserve_tokens is None else reserve_tokens
        return pack(
            self.engine.encode_chat,
            question,
            merge_adjacent(passages),
            history,
            self.context_tokens - reserve,
        )

    def stream(
        self,
        question: str,
        collection: str,
        k: int,
        *,
        history: Sequence[Message] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        stop: Sequence[str] = (),
    ) -> Iterator[Delta | Answer]:
        """Yield the answer text as it is generated, then the complete Answer.

        `stop`: strings that end this answer, besides llm.stop (OpenAI's `stop`).

        A follow-up question is searched as a standalone query (Answer.rewritten_query).
        When nothing retrieved is similar enough to the question, the answer is NOT_FOUND
        and the LLM is not called; when the rule is unsure, the LLM first says whether the
        sources hold the answer (rag.qa.modelcheck).
        """
        if not question.strip():
            raise UsageError("the question is empty")
        rewritten = self.standalone_query(question, history)
        query = rewritten or question
        passages = self.search(query, collection, k)
        r = self.retrieval
        relevant = bool(passages) and is_relevant(passages, r.min_score, query, r.word_weight)
        if not relevant and not (passages and needs_model_check(passages, query, r, self.engine)):
            yield from self._not_found(bool(passages), rewritten)
            return
        if r.rerank == "llm":
            passages = llm_rerank(self.engine, query, passages, r)
        reserve = self._reserve(max_tokens)
        packing = self.pack(question, passages, history, reserve)
        if not relevant and sources_answer_logit(self.engine, packing.messages) < (
            r.model_check_logit
        ):
            yield from self._not_found(True, rewritten)
            return
        answer = None
        for item in self._generate(
            packing.prompt_ids,
            packing.kept,
            packing.dropped_chunk_ids,
            reserve,
            temperature,
            should_stop,
            stop,
        ):
            if isinstance(item, Answer):
                answer = item
            else:
                yield item
        assert answer is not None
        yield replace(answer, rewritten_query=rewritten, dropped_turns=packing.dropped_turns)

    def _not_found(self, found: bool, rewritten: str | None) -> Iterator[Delta | Answer]:
        text = NOT_FOUND if found else NOTHING_FOUND
        yield Delta(text)
        yield Answer(answer=text, rewritten_query=rewritten, not_found=True)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        stop: Sequence[str] = (),
    ) -> Iterator[Delta | Answer]:
        """The plain LLM on a conversation, without documents."""
        if not messages:
            raise UsageError("messages is empty")
        reserve = self._reserve(max_tokens)
        prompt_ids = self.engine.encode_chat(list(messages))
        yield from self._generate(prompt_ids, [], [], reserve, temperature, should_stop, stop)

    def _reserve(self, max_tokens: int | None) -> int:
        if max_tokens is None:
            return self.answer_tokens
        if not 0 < max_tokens < self.context_tokens:
            raise UsageError(
                f"max_tokens = {max_tokens}: use 1 to {self.context_tokens - 1} "
                f"(the context holds {self.context_tokens} tokens)"
            )
        return max_tokens

    def _generate(
        self,
        prompt_ids: list[int],
        kept: list[Passage],
        dropped: list[str],
        max_tokens: int,
        temperature: float | None,
        should_stop: Callable[[], bool],
        stop: Sequence[str] = (),
    ) -> Iterator[Delta | Answer]:
        generation: Generation | None = None
        # Without sources (the plain LLM) brackets are the model's own, never markers.
        markers = MarkerFilter(len(kept)) if kept else None
        for item in self.engine.stream(
            prompt_ids,
            max_tokens=max_tokens,
            context_tokens=self.context_tokens,
            temperature=self.temperature if temperature is None else temperature,
            should_stop=should_stop,
            stop=(*self.engine.stop, *stop) if stop else None,
        ):
            if isinstance(item, Delta):
                text = markers.feed(item.text) if markers else item.text
                if text:
                    yield Delta(text)
            else:
                generation = item
        if markers and (rest := markers.flush()):
            yield Delta(rest)
        assert generation is not None  # Engine.stream always ends with a Generation
        text, cited = generation.text.strip(), set[int]()
        if kept:
            text, cited = clean_markers(text, len(kept))
        yield Answer(
            answer=text,
            citations=citations_for(kept, cited),
            usage=Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                ttft_s=generation.ttft_s,
                tokens_per_s=generation.tokens_per_s,
            ),
            dropped=dropped,
            finish_reason=generation.finish_reason,
            sentences=check_answer(text, kept) if kept else [],
        )

    def ask(self, question: str, collection: str, k: int) -> Answer:
        final = None
        for item in self.stream(question, collection, k):
            if isinstance(item, Answer):
                final = item
        assert final is not None
        return final


def load_answerer(settings: Settings, read_consistency_s: float | None = None) -> Answerer:
    """Load the embedder, the index and the LLM named by the settings.

    The LLM is planned against this machine's memory first, from its metadata alone: one
    that does not fit is refused with the numbers before anything loads, and the context
    is capped at what the plan says fits (llama.cpp allocates its KV cache for it). With
    llm.engine = "openai" the weights live on the server: the context is what the server
    and the model allow, and no memory is planned here.
    """

    # llm.model = "auto": the largest installed model that fits and is fast enough here.
    settings = with_model(settings, resolve_model(settings))
    context_tokens = settings.llm.context_tokens
    served = None
    choice = choose_engine(settings.llm)
    if choice.local:
        served = plan_configured(settings, resolve_hardware(settings.hardware))
        require_fit(served)
        context_tokens = min(context_tokens, served.max_context_tokens)
    # The engine first: an unreachable server is reported before the slow loads.
    engine = load_engine(settings.llm, context_tokens=context_tokens, choice=choice)
    embedder = load_embedder(settings.embedding)
    store = open_index(settings.storage, embedder.name, embedder.dim, read_consistency_s)
    return Answerer(
        store=store,
        embedder=embedder,
        engine=engine,
        context_tokens=min(context_tokens, engine.max_context_tokens),
        answer_tokens=settings.llm.answer_tokens,
        temperature=settings.llm.temperature,
        retrieval=settings.retrieval,
        plan=served,
    )
