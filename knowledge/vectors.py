"""Vector retrieval: passages embedded by the account's OpenAI-compatible provider
(`POST /embeddings`: OpenAI, Ollama, vLLM...), stored in Chunk.embedding (real[]) and searched
with pgvector when the database has it.

Embedding calls go through the openai SDK with the provider's base URL and the account's key,
the client and the error classification the agents use (agents.runner.providers): a failure has
the same outcomes (key rejected, rate limited, timed out, model not found, unreachable, refused)
and a 401 marks the key rejected, as an agent's call does. Every request is a ModelCall
(purpose "embeddings", no agent, agent_name "Knowledge: <knowledge base>"), so its tokens show on
the usage page and count against the account's monthly budget; with the budget used up, nothing
is embedded (full text still works).

Indexing sends a document's passages KNOWLEDGE_EMBEDDING_BATCH_SIZE at a time; a failure leaves
the document without vectors (all or nothing) and says why (knowledge.services). A search sends
its query once, with a short timeout and no retry: past it, full text answers alone.

Why real[] and casts, not a column of pgvector's type: the column then exists with or without
the extension (a database without pgvector migrates the same), and one column holds any model's
dimensions. A search casts it to `vector(d)`, d being the query vector's length, and an HNSW
index per dimension serves exactly that expression for the rows of that length:

    CREATE INDEX knowledge_chunk_embedding_hnsw_<d> ON knowledge_chunk
        USING hnsw ((embedding::vector(<d>)) vector_cosine_ops)
        WHERE array_length(embedding, 1) = <d>

made in the account's schema (the first of its search path) when a knowledge base first gets
vectors of that length. The search repeats that expression and predicate word for word, or
PostgreSQL would not use the index. Only the integer d is ever put into SQL text. HNSW takes at
most 2000 dimensions in pgvector 0.6: longer vectors are stored and searched exactly, unindexed.

The index answers "the nearest chunks" before the knowledge-base filter is applied, so a search
in one knowledge base of many looks at hnsw.ef_search candidates (EF_SEARCH, above pgvector's
40) to keep enough of its own.
"""

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from agents.models import ModelCall
from agents.runner.providers import ProviderFailure, classify, client_for
from agents.selectors import account_budget, tokens_used_this_month
from knowledge.models import Chunk, Document, KnowledgeBase
from llms.models import LLM, AccountLLM
from llms.services import mark_key_rejected
from tenancy.context import current_account

logger = logging.getLogger(__name__)

HNSW_MAX_DIMENSIONS = 2000
# pgvector's vector type holds at most this many.
MAX_DIMENSIONS = 16000
EF_SEARCH = 200
ProgressCallback = Callable[[int, int], None]


class EmbeddingFailed(Exception):
    """The provider gave no usable vectors: `outcome` a ModelCall.Outcome, `reason` in words."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass(frozen=True)
class EmbeddedChunks:
    """What embed_chunks made of a document's passages: one vector per passage, in order, or
    None with `error` saying why ("" when the knowledge base has no vector search at all)."""

    vectors: list[list[float]] | None
    error: str = ""


def index_name(dimensions: int) -> str:
    return f"knowledge_chunk_embedding_hnsw_{int(dimensions)}"


def embedding_text(heading_path: Sequence[str], text: str) -> str:
    """What is embedded for a passage: its heading path, then its text (the headings say what a
    passage is about when its own words do not)."""
    path = " > ".join(heading for heading in heading_path if heading)
    return f"{path}\n\n{text}" if path else text


def pgvector_installed() -> bool:
    """Whether the database has the pgvector extension (created in the public schema)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone() is not None


def embedding_config(knowledge_base: KnowledgeBase) -> AccountLLM | None:
    """The provider configuration a knowledge base embeds with: only ever the active account's
    own (the column crosses schemas without a constraint, so it is checked here)."""
    account = current_account()
    if account is None or knowledge_base.embedding_llm_id is None:
        return None
    if not knowledge_base.embedding_model:
        return None
    return (
        AccountLLM.objects.select_related("llm")
        .filter(pk=knowledge_base.embedding_llm_id, account_id=account.pk)
        .first()
    )


def _budget_used_up() -> bool:
    account = current_account()
    if account is None:
        return False
    budget = account_budget(account=account)
    return budget is not None and tokens_used_this_month() >= budget


def _vector(value: Any, dimensions: int | None) -> list[float]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_DIMENSIONS:
        raise ValueError("an embedding that is not a list of numbers")
    if dimensions is not None and len(value) != dimensions:
        raise ValueError(f"embeddings of {dimensions} and {len(value)} dimensions in one answer")
    vector = [float(v) for v in value]
    if not all(math.isfinite(v) for v in vector):
        raise ValueError("an embedding with a value that is not a finite number")
    return vector


def _parse(raw: bytes, count: int) -> tuple[list[list[float]], int | None]:
    """The vectors of an /embeddings answer, in input order, and the tokens it reports."""
    body = json.loads(raw)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise ValueError(f"{len(data) if isinstance(data, list) else 'no'} embeddings for {count}")
    ordered = sorted(data, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0)
    vectors: list[list[float]] = []
    for item in ordered:
        embedding = item.get("embedding") if isinstance(item, dict) else None
        vectors.append(_vector(embedding, len(vectors[0]) if vectors else None))
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return vectors, tokens if isinstance(tokens, int) and tokens >= 0 else None


def embed_texts(
    *,
    config: AccountLLM,
    model: str,
    texts: Sequence[str],
    usage_name: str,
    timeout: float,
    max_retries: int,
    batch_size: int,
    progress: ProgressCallback | None = None,
) -> list[list[float]]:
    """One vector per text, asked `batch_size` texts per request; each request is recorded as a
    ModelCall. Raises EmbeddingFailed at the first request that fails (recorded too)."""
    if config.llm.kind != LLM.Kind.OPENAI:
        raise EmbeddingFailed(
            ModelCall.Outcome.BAD_REQUEST,
            f"{config.llm.name} has no embeddings API; choose an OpenAI-compatible provider",
        )
    client = client_for(config).with_options(timeout=timeout, max_retries=max_retries)
    vectors: list[list[float]] = []
    batch_size = max(1, batch_size)
    for start in range(0, len(texts), batch_size):
        batch = [text.replace("\x00", " ") or " " for text in texts[start : start + batch_size]]
        began = time.monotonic()
        tokens: int | None = None
        try:
            try:
                response = client.embeddings.with_raw_response.create(
                    model=model, input=batch, encoding_format="float"
                )
            except openai.APIError as exc:
                raise _failure(classify(exc, model=model, provider=config.llm.name)) from None
            try:
                batch_vectors, tokens = _parse(response.content, len(batch))
            except (ValueError, TypeError, AttributeError) as exc:
                raise EmbeddingFailed(
                    ModelCall.Outcome.ERROR,
                    f"{config.llm.name} answered embeddings that cannot be used ({exc})",
                ) from None
            if vectors and len(batch_vectors[0]) != len(vectors[0]):
                raise EmbeddingFailed(
                    ModelCall.Outcome.ERROR,
                    f"{config.llm.name} answered embeddings of {len(vectors[0])} and "
                    f"{len(batch_vectors[0])} dimensions for one document",
                )
        except EmbeddingFailed as failed:
            _record(config, model, usage_name, began, tokens or 0, failed.outcome, failed.reason)
            if failed.outcome == ModelCall.Outcome.AUTH:
                account = current_account()
                if account is not None:
                    mark_key_rejected(account=account, config=config)
            raise
        # A provider that reports no usage (some servers) is counted by a rough estimate, so the
        # budget still sees the call.
        used = tokens if tokens is not None else sum(len(text) // 4 + 1 for text in batch)
        _record(config, model, usage_name, began, used, ModelCall.Outcome.OK, "")
        vectors.extend(batch_vectors)
        if progress is not None:
            progress(len(vectors), len(texts))
    return vectors


def _failure(failure: ProviderFailure) -> EmbeddingFailed:
    return EmbeddingFailed(failure.outcome, failure.reason)


def _record(
    config: AccountLLM,
    model: str,
    usage_name: str,
    began: float,
    tokens: int,
    outcome: str,
    error: str,
) -> None:
    ModelCall.objects.create(
        purpose=ModelCall.Purpose.EMBEDDINGS,
        agent=None,
        agent_name=usage_name[:100],
        provider=config.llm.name,
        model=model[:200],
        input_tokens=tokens,
        output_tokens=0,
        latency_ms=int((time.monotonic() - began) * 1000),
        outcome=outcome,
        error=error[:500],
    )


def usage_name(knowledge_bases: Sequence[KnowledgeBase]) -> str:
    """How embedding calls are named on the usage page."""
    return "Knowledge: " + ", ".join(kb.name for kb in knowledge_bases)


def embed_chunks(
    *,
    document: Document,
    chunk_texts: Sequence[str],
    progress_callback: ProgressCallback | None = None,
) -> EmbeddedChunks:
    """Embed a document's passages (embedding_text of each, in order) for its knowledge base, in
    batches, calling progress_callback(done, total) after each. Nothing when the knowledge base
    has no embedding model or the database no pgvector. On failure: no vectors and the reason;
    the caller stores the passages for full-text search all the same.

    Learns the knowledge base's dimensions from the answer and makes their HNSW index."""
    knowledge_base = document.knowledge_base
    if not knowledge_base.embedding_model or knowledge_base.embedding_llm_id is None:
        return EmbeddedChunks(None)
    if not chunk_texts or not pgvector_installed():
        return EmbeddedChunks(None)
    config = embedding_config(knowledge_base)
    if config is None:
        return EmbeddedChunks(None, "the knowledge base's embedding provider is not configured")
    if _budget_used_up():
        return EmbeddedChunks(None, "the account's monthly token budget is used up")
    try:
        vectors = embed_texts(
            config=config,
            model=knowledge_base.embedding_model,
            texts=chunk_texts,
            usage_name=usage_name([knowledge_base]),
            timeout=settings.KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS,
            max_retries=settings.AGENT_LLM_MAX_RETRIES,
            batch_size=settings.KNOWLEDGE_EMBEDDING_BATCH_SIZE,
            progress=progress_callback,
        )
    except EmbeddingFailed as failed:
        logger.warning("embedding document %s failed: %s", document.pk, failed.reason)
        return EmbeddedChunks(None, failed.reason)
    dimensions = len(vectors[0])
    if knowledge_base.embedding_dimensions != dimensions:
        KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(embedding_dimensions=dimensions)
        knowledge_base.embedding_dimensions = dimensions
    try:
        ensure_vector_index(dimensions)
    except DatabaseError as exc:
        # The vectors are still stored and searched, exactly, without the index.
        logger.warning("no vector index for %s dimensions: %s", dimensions, exc)
    return EmbeddedChunks(vectors)


def ensure_vector_index(dimensions: int) -> bool:
    """Make the HNSW index for vectors of `dimensions` in the active account's schema, unless it
    exists. False when that many dimensions cannot be indexed (searched exactly instead)."""
    dimensions = int(dimensions)
    if not 0 < dimensions <= HNSW_MAX_DIMENSIONS:
        return False
    name = index_name(dimensions)
    exists = (
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(exists, [name])
        if cursor.fetchone() is not None:
            return True
    table = Chunk._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        # Two workers indexing their first documents at once: one makes it, the other waits
        # and finds it made (CREATE INDEX IF NOT EXISTS alone can collide on the name).
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.' || %s))", [name]
        )
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
            f"USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) "
            f"WHERE array_length(embedding, 1) = {dimensions}"
        )
    return True


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


@dataclass(frozen=True)
class VectorRow:
    chunk_id: int
    ordinal: int
    document_id: int
    document_title: str
    knowledge_base_id: int
    heading_path: tuple[str, ...]
    page: int | None
    text: str
    distance: float


def vector_search_statement(
    *, query_vector: Sequence[float], knowledge_base_ids: Sequence[int], limit: int
) -> tuple[str, list[Any]]:
    """The nearest chunks' query: the index's expression and predicate, word for word."""
    d = len(query_vector)
    if not 0 < d <= MAX_DIMENSIONS:
        raise ValueError(f"a query vector of {d} dimensions")
    sql = f"""
SELECT c.id, c.ordinal, c.document_id, d.title, d.knowledge_base_id, c.heading_path, c.page,
       c.text, (c.embedding::vector({d})) <=> %s::vector({d}) AS distance
FROM {Chunk._meta.db_table} c
JOIN {Document._meta.db_table} d ON d.id = c.document_id
WHERE array_length(c.embedding, 1) = {d} AND d.knowledge_base_id = ANY(%s::bigint[])
ORDER BY (c.embedding::vector({d})) <=> %s::vector({d})
LIMIT %s
"""
    literal = vector_literal(query_vector)
    return sql, [literal, list(knowledge_base_ids), literal, int(limit)]


def vector_search(
    *, query_vector: Sequence[float], knowledge_base_ids: Sequence[int], limit: int
) -> list[VectorRow]:
    """The active account's chunks nearest to `query_vector` (cosine) in those knowledge bases,
    nearest first. Only chunks embedded with as many dimensions as the query are compared."""
    if not knowledge_base_ids or limit < 1:
        return []
    sql, params = vector_search_statement(
        query_vector=query_vector, knowledge_base_ids=knowledge_base_ids, limit=limit
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL hnsw.ef_search = {int(max(EF_SEARCH, limit))}")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        VectorRow(
            chunk_id=row[0],
            ordinal=row[1],
            document_id=row[2],
            document_title=row[3],
            knowledge_base_id=row[4],
            heading_path=tuple(row[5]),
            page=row[6],
            text=row[7],
            distance=float(row[8]),
        )
        for row in rows
    ]


def embed_query(*, query: str, knowledge_bases: Sequence[KnowledgeBase]) -> list[float]:
    """The query's vector from the knowledge bases' (shared) embedding model: one request, a
    short timeout, no retry, recorded as a ModelCall. Raises EmbeddingFailed."""
    config = embedding_config(knowledge_bases[0])
    if config is None:
        raise EmbeddingFailed(
            ModelCall.Outcome.ERROR, "the knowledge base's embedding provider is not configured"
        )
    if _budget_used_up():
        raise EmbeddingFailed(
            ModelCall.Outcome.ERROR, "the account's monthly token budget is used up"
        )
    return embed_texts(
        config=config,
        model=knowledge_bases[0].embedding_model,
        texts=[query],
        usage_name=usage_name(knowledge_bases),
        timeout=settings.KNOWLEDGE_QUERY_EMBEDDING_TIMEOUT_SECONDS,
        max_retries=0,
        batch_size=1,
    )[0]
