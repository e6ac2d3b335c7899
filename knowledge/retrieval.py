"""What the agents' knowledge_search tool and the knowledge base page search with.

`retrieve` is the one entry point: full-text search over the knowledge bases' chunks always
(knowledge.selectors.search_chunks), fused with vector similarity by reciprocal rank fusion when
a knowledge base has an embedding model and the database has pgvector (knowledge.vectors). Each
hit says which rankings found it (ChunkHit.found_by).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection

from knowledge.models import KnowledgeBase
from knowledge.selectors import search_chunks
from knowledge.types import ChunkHit


def pgvector_installed() -> bool:
    """Whether the database has the pgvector extension (created in the public schema)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone() is not None


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


def retrieve(
    *, query: str, knowledge_bases: Sequence[KnowledgeBase] | None = None, limit: int = 5
) -> list[ChunkHit]:
    """The active account's passages best answering `query`, best first."""
    return search_chunks(query=query, knowledge_bases=knowledge_bases, limit=limit)
