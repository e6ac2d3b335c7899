"""What the agents' knowledge_search tool and the knowledge base page search with.

`retrieve` is the one entry point: full-text search over the knowledge bases' chunks always
(knowledge.selectors.search_chunks), fused with vector similarity by reciprocal rank fusion when
a knowledge base has an embedding model and the database has pgvector (knowledge.vectors). Each
hit says which rankings found it (ChunkHit.found_by).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from django.db import connection

from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.selectors import (
    _HEADLINE_FROM,
    _HEADLINE_OPTIONS,
    _HEADLINE_TO,
    MAX_LIMIT,
    MAX_QUERY_LENGTH,
    headline_segments,
    search_chunks,
)
from knowledge.types import ChunkHit, HeadlineSegment
from knowledge.vectors import (
    EmbeddingFailed,
    VectorRow,
    embed_query,
    pgvector_installed,
    vector_search,
)
from tenancy import NoTenantError
from tenancy.context import is_public

__all__ = ["Retrieval", "RetrievalMode", "pgvector_installed", "retrieval_mode", "retrieve"]

logger = logging.getLogger(__name__)

# Reciprocal rank fusion: a passage scores the sum of 1 / (RRF_K + its rank) over the rankings
# that found it (rank 1 the best), so agreeing rankings lift a passage and neither ranking's raw
# scores (ts_rank_cd, cosine distance) need to be comparable. 60 is the constant of Cormack,
# Clarke and Büttcher (2009), where the fusion is less sensitive to it.
RRF_K = 60
# Each ranking offers this many passages (at least) to the fusion.
CANDIDATES = 20


@dataclass(frozen=True)
class RetrievalMode:
    """How a knowledge base is searched, and in words why (shown on its page)."""

    vector: bool
    reason: str


def retrieval_mode(knowledge_base: KnowledgeBase) -> RetrievalMode:
    if not knowledge_base.embedding_model or knowledge_base.embedding_llm_id is None:
        return RetrievalMode(
            False, "Full-text search only: this knowledge base has no embedding model."
        )
    if not pgvector_installed():
        return RetrievalMode(
            False,
            "Full-text search only: the database has no pgvector extension "
            "(see the README, “Vector search”).",
        )
    return RetrievalMode(
        True, f"Full text and vector similarity ({knowledge_base.embedding_model}), fused."
    )


@dataclass(frozen=True)
class Retrieval:
    """A search's passages, best first, and what the searcher should know about how they were
    found (a vector search that failed and why: the passages then come from full text alone)."""

    hits: list[ChunkHit]
    notes: tuple[str, ...] = ()


def retrieve(
    *, query: str, knowledge_bases: Sequence[KnowledgeBase] | None = None, limit: int = 5
) -> list[ChunkHit]:
    """The active account's passages best answering `query`, best first."""
    return search(query=query, knowledge_bases=knowledge_bases, limit=limit).hits


def search(
    *, query: str, knowledge_bases: Sequence[KnowledgeBase] | None = None, limit: int = 5
) -> Retrieval:
    """retrieve(), with notes. Full text over every knowledge base; for those with an embedding
    model (when the database has pgvector) the query is embedded once per model and the nearest
    passages fused with the full-text ranking by reciprocal rank fusion. Each hit's found_by says
    which rankings found it, its rank is its fused score."""
    if is_public():
        raise NoTenantError("knowledge search")
    query = " ".join(query.replace("\x00", " ").split())[:MAX_QUERY_LENGTH]
    limit = min(limit, MAX_LIMIT)
    if not query or limit < 1:
        return Retrieval([])
    bases = (
        list(knowledge_bases) if knowledge_bases is not None else list(KnowledgeBase.objects.all())
    )
    if not bases:
        return Retrieval([])
    groups: dict[tuple[object, str], list[KnowledgeBase]] = {}
    for kb in bases:
        if kb.embedding_model and kb.embedding_llm_id is not None:
            groups.setdefault((kb.embedding_llm_id, kb.embedding_model), []).append(kb)
    if not groups or not pgvector_installed():
        return Retrieval(search_chunks(query=query, knowledge_bases=bases, limit=limit))
    candidates = min(MAX_LIMIT, max(limit, CANDIDATES))
    text_hits = search_chunks(query=query, knowledge_bases=bases, limit=candidates)
    notes: list[str] = []
    vector_rankings: list[list[VectorRow]] = []
    for group in groups.values():
        try:
            vector = embed_query(query=query, knowledge_bases=group)
        except EmbeddingFailed as failed:
            names = ", ".join(kb.name for kb in group)
            logger.warning("query embedding for %s failed: %s", names, failed.reason)
            notes.append(f"Vector search in {names} failed ({failed.reason}): full text only.")
            continue
        vector_rankings.append(
            vector_search(
                query_vector=vector,
                knowledge_base_ids=[kb.pk for kb in group],
                limit=candidates,
            )
        )
    return Retrieval(fuse(query, text_hits, vector_rankings, limit), tuple(notes))


def rrf_scores(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion of rankings of ids, best first in each."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return scores


def fuse(
    query: str, text_hits: list[ChunkHit], vector_rankings: list[list[VectorRow]], limit: int
) -> list[ChunkHit]:
    scores = rrf_scores(
        [[hit.chunk_id for hit in text_hits]]
        + [[row.chunk_id for row in ranking] for ranking in vector_rankings]
    )
    by_text = {hit.chunk_id: hit for hit in text_hits}
    by_vector = {row.chunk_id: row for ranking in vector_rankings for row in ranking}
    best = sorted(scores, key=lambda chunk_id: (-scores[chunk_id], chunk_id))[:limit]
    headlines = _headlines(query, [c for c in best if c not in by_text])
    hits = []
    for chunk_id in best:
        found_by = tuple(
            name
            for name, found in (("text", chunk_id in by_text), ("vector", chunk_id in by_vector))
            if found
        )
        if chunk_id in by_text:
            hit = replace(by_text[chunk_id], rank=scores[chunk_id], found_by=found_by)
        else:
            row = by_vector[chunk_id]
            hit = ChunkHit(
                chunk_id=row.chunk_id,
                ordinal=row.ordinal,
                document_id=row.document_id,
                document_title=row.document_title,
                knowledge_base_id=row.knowledge_base_id,
                heading_path=row.heading_path,
                page=row.page,
                text=row.text,
                headline=headlines.get(chunk_id, (HeadlineSegment(row.text[:300], False),)),
                rank=scores[chunk_id],
                found_by=found_by,
            )
        hits.append(hit)
    return hits


_HEADLINES = f"""
SELECT c.id, ts_headline(kb.language::regconfig, translate(c.text, %s, %s),
                         websearch_to_tsquery(kb.language::regconfig, %s), %s)
FROM {Chunk._meta.db_table} c
JOIN {Document._meta.db_table} d ON d.id = c.document_id
JOIN {KnowledgeBase._meta.db_table} kb ON kb.id = d.knowledge_base_id
WHERE c.id = ANY(%s::bigint[])
"""


def _headlines(query: str, chunk_ids: list[int]) -> dict[int, tuple[HeadlineSegment, ...]]:
    """Highlights of the passages only the vectors found, as search_chunks makes them: the words
    of the query they happen to hold marked, else their beginning."""
    if not chunk_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            _HEADLINES, [_HEADLINE_FROM, _HEADLINE_TO, query, _HEADLINE_OPTIONS, chunk_ids]
        )
        return {chunk_id: headline_segments(headline) for chunk_id, headline in cursor.fetchall()}
