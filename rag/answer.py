"""Answer a question from the documents: retrieve, pack into the context, generate, cite."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from rag.config import Settings
from rag.embedder import Embedder
from rag.engine import Generation, MlxEngine
from rag.errors import UsageError
from rag.prompts import Message, build_messages
from rag.records import Answer, Citation, Delta, Passage, Usage
from rag.store import Store

NOTHING_FOUND = "Nothing in your documents matches this question; ingest documents first."


@dataclass
class Answerer:
    """Everything a question needs, loaded once and shared by the CLI and the web service."""

    store: Store
    embedder: Embedder
    engine: MlxEngine
    context_tokens: int
    answer_tokens: int
    temperature: float = 0.0

    def search(self, query: str, collection: str, k: int) -> list[Passage]:
        if not query.strip():
            raise UsageError("the question is empty")
        return self.store.search(collection, self.embedder.embed_query(query), k)

    def pack(
        self,
        question: str,
        passages: list[Passage],
        history: Sequence[Message] = (),
        reserve_tokens: int | None = None,
    ) -> tuple[list[int], list[Passage]]:
        """Prompt ids with as many passages as fit, dropping the lowest-ranked first.

        When even no passage leaves room, the oldest turns of the history go next; the engine
        refuses what still does not fit.
        """
        reserve = self.answer_tokens if reserve_tokens is None else reserve_tokens
        kept, turns = list(passages), list(history)
        while True:
            ids = self.engine.encode_chat(build_messages(question, kept, turns))
            if len(ids) + reserve <= self.context_tokens or not (kept or turns):
                return ids, kept
            if kept:
                kept.pop()
            else:
                turns = turns[2:] if len(turns) > 1 else []

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
    ) -> Iterator[Delta | Answer]:
        """Yield the answer text as it is generated, then the complete Answer."""
        passages = self.search(question, collection, k)
        if not passages:
            yield Delta(NOTHING_FOUND)
            yield Answer(answer=NOTHING_FOUND)
            return
        reserve = self._reserve(max_tokens)
        prompt_ids, kept = self.pack(question, passages, history, reserve)
        dropped = [p.chunk_id for p in passages[len(kept) :]]
        yield from self._generate(prompt_ids, kept, dropped, reserve, temperature, should_stop)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[Delta | Answer]:
        """The plain LLM on a conversation, without documents."""
        if not messages:
            raise UsageError("messages is empty")
        reserve = self._reserve(max_tokens)
        prompt_ids = self.engine.encode_chat(list(messages))
        yield from self._generate(prompt_ids, [], [], reserve, temperature, should_stop)

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
    ) -> Iterator[Delta | Answer]:
        generation: Generation | None = None
        for item in self.engine.stream(
            prompt_ids,
            max_tokens=max_tokens,
            context_tokens=self.context_tokens,
            temperature=self.temperature if temperature is None else temperature,
            should_stop=should_stop,
        ):
            if isinstance(item, Delta):
                yield item
            else:
                generation = item
        assert generation is not None  # MlxEngine.stream always ends with a Generation
        yield Answer(
            answer=generation.text.strip(),
            citations=[
                Citation(n, p.source, p.page, p.heading, p.chunk_id, p.text, p.score)
                for n, p in enumerate(kept, start=1)
            ],
            usage=Usage(
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                ttft_s=generation.ttft_s,
                tokens_per_s=generation.tokens_per_s,
            ),
            dropped=dropped,
            finish_reason=generation.finish_reason,
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
    is capped at what the plan says fits.
    """
    from rag.embedder import load_embedder
    from rag.engine import load_engine
    from rag.hardware import resolve_hardware
    from rag.planner import require_fit
    from rag.sizing import plan_configured
    from rag.store import open_store

    served = plan_configured(settings, resolve_hardware(settings.hardware))
    require_fit(served)
    embedder = load_embedder(settings.embedding)
    store = open_store(settings.storage.data_path, embedder.name, embedder.dim, read_consistency_s)
    engine = load_engine(settings.llm)
    return Answerer(
        store=store,
        embedder=embedder,
        engine=engine,
        context_tokens=min(
            settings.llm.context_tokens, engine.max_context_tokens, served.max_context_tokens
        ),
        answer_tokens=settings.llm.answer_tokens,
        temperature=settings.llm.temperature,
    )
