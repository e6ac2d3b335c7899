"""Full-text retrieval over the active account's chunks.

One statement answers a search over knowledge bases of any mix of languages: a UNION ALL with a
branch per language, where the query is parsed with that language's configuration
(websearch_to_tsquery, which never rejects input) and the chunks of its knowledge bases are found
through the `chunk_search` GIN index and ranked with ts_rank_cd, the heading path (weight A)
counting above the text (B). A query of stop words alone parses to an empty tsquery, which
matches nothing. Highlights are made with ts_headline for the returned passages only, with
private-use markers that become HeadlineSegments, so a passage's text is never taken for HTML.

Each knowledge base's chunks are indexed with its language: changing the language needs its
documents re-indexed (replace_chunks) before searches in the new language find them.
"""

import re
from collections.abc import Sequence
from typing import Any

from django.db import connection

from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.types import ChunkHit, HeadlineSegment
from tenancy import NoTenantError
from tenancy.context import is_public

__all__ = ["ChunkHit", "HeadlineSegment", "search_chunks"]

# A query is a few words or a question; a pasted page would only make the tsquery costly.
MAX_QUERY_LENGTH = 1000
MAX_LIMIT = 100

# ts_headline's StartSel/StopSel: private-use code points, removed from the text before
# ts_headline sees it, so every one in its output is a marker it put there.
START_MARK = "\ue000"
STOP_MARK = "\ue001"
_MARK_SPLIT = re.compile(f"([{START_MARK}{STOP_MARK}])")
# ts_headline drops what looks like an HTML tag ("use <div> here" -> "use  here"), and documents
# hold code: < and > go in as two more private-use stand-ins and come back out afterwards.
_LT, _GT = "\ue002", "\ue003"
_HEADLINE_FROM = f"<>{START_MARK}{STOP_MARK}{_LT}{_GT}"  # translate(): < > mapped, the rest gone
_HEADLINE_TO = f"{_LT}{_GT}"
_STAND_INS_BACK = str.maketrans({_LT: "<", _GT: ">"})
_HEADLINE_OPTIONS = (
    f"StartSel={START_MARK}, StopSel={STOP_MARK}, "
    'MaxFragments=3, MaxWords=25, MinWords=10, FragmentDelimiter=" … "'
)

# One branch per language. The configuration and the query are literals, so PostgreSQL folds the
# tsquery into a constant and estimates from the column's statistics how many chunks match: the
# GIN index for selective words, a scan where most chunks match anyway. (With the query computed
# from a column instead, the planner cannot estimate it and scans the table at any size.)
_BRANCH = f"""(
    SELECT c.id AS chunk_id, c.ordinal, c.document_id, d.title AS document_title,
           d.knowledge_base_id, c.heading_path, c.page, c.text,
           ts_rank_cd(c.search_vector, q.query) AS rank, q.config, q.query
    FROM (SELECT %s::regconfig AS config, websearch_to_tsquery(%s::regconfig, %s) AS query) q
    CROSS JOIN {Chunk._meta.db_table} c
    JOIN {Document._meta.db_table} d ON d.id = c.document_id
    WHERE c.search_vector @@ q.query AND d.knowledge_base_id = ANY(%s::bigint[])
    ORDER BY rank DESC, c.id
    LIMIT %s
)"""

# ts_headline only for the passages returned: it re-parses the whole text, the costly part.
_SEARCH = """
SELECT chunk_id, ordinal, document_id, document_title, knowledge_base_id, heading_path, page, text,
       ts_headline(config, translate(text, %s, %s), query, %s),
       rank
FROM (
    SELECT * FROM ({branches}) hits ORDER BY rank DESC, chunk_id LIMIT %s
) top
ORDER BY rank DESC, chunk_id
"""


def search_statement(
    *, query: str, kb_ids_by_language: dict[str, list[int]], limit: int
) -> tuple[str, list[Any]]:
    """The one statement search_chunks runs (its SQL and parameters)."""
    params: list[Any] = [_HEADLINE_FROM, _HEADLINE_TO, _HEADLINE_OPTIONS]
    for language, kb_ids in sorted(kb_ids_by_language.items()):
        params += [language, language, query, kb_ids, limit]
    params.append(limit)
    branches = " UNION ALL ".join([_BRANCH] * len(kb_ids_by_language))
    return _SEARCH.format(branches=branches), params


def headline_segments(headline: str) -> tuple[HeadlineSegment, ...]:
    """ts_headline output (with this module's markers) as plain and marked runs of text."""
    segments: list[HeadlineSegment] = []
    marked = False
    for piece in _MARK_SPLIT.split(headline):
        if piece == START_MARK:
            marked = True
        elif piece == STOP_MARK:
            marked = False
        elif piece:
            text = piece.translate(_STAND_INS_BACK)
            if segments and segments[-1].marked == marked:
                segments[-1] = HeadlineSegment(segments[-1].text + text, marked)
            else:
                segments.append(HeadlineSegment(text, marked))
    return tuple(segments)


def search_chunks(
    *,
    query: str,
    knowledge_bases: Sequence[KnowledgeBase] | None = None,
    limit: int = 10,
) -> list[ChunkHit]:
    """The active account's passages best matching `query` (web-search syntax: "a phrase",
    -excluded, this OR that), best first, in `knowledge_bases` (all of the account's when None).

    A query with nothing to search for (empty, punctuation, stop words only) finds nothing.
    """
    if is_public():
        raise NoTenantError("knowledge search")  # before any SQL: the tables are per account
    query = " ".join(query.replace("\x00", " ").split())[:MAX_QUERY_LENGTH]
    limit = min(limit, MAX_LIMIT)
    if not query or limit < 1 or (knowledge_bases is not None and not knowledge_bases):
        return []
    pairs = (
        [(kb.pk, kb.language) for kb in knowledge_bases]
        if knowledge_bases is not None
        # All of them: a second round trip, of a few rows.
        else list(KnowledgeBase.objects.values_list("pk", "language"))
    )
    kb_ids_by_language: dict[str, list[int]] = {}
    for kb_id, language in pairs:
        if language not in KnowledgeBase.Language.values:
            # Only the listed configurations ever reach SQL (the column's check says the same).
            raise ValueError(f"knowledge base {kb_id} has an unknown language {language!r}")
        kb_ids_by_language.setdefault(language, []).append(kb_id)
    if not kb_ids_by_language:
        return []
    sql, params = search_statement(query=query, kb_ids_by_language=kb_ids_by_language, limit=limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        ChunkHit(
            chunk_id=chunk_id,
            ordinal=ordinal,
            document_id=document_id,
            document_title=document_title,
            knowledge_base_id=knowledge_base_id,
            heading_path=tuple(heading_path),
            page=page,
            text=text,
            headline=headline_segments(headline),
            rank=float(rank),
        )
        for (
            chunk_id,
            ordinal,
            document_id,
            document_title,
            knowledge_base_id,
            heading_path,
            page,
            text,
            headline,
            rank,
        ) in rows
    ]
