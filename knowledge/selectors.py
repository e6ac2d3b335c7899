"""Full-text retrieval over the active account's chunks.

One statement answers a search over knowledge bases of any mix of languages: the query is parsed
once per language (websearch_to_tsquery, which never rejects input), and for each language the
chunks of its knowledge bases are found through the `chunk_search` GIN index and ranked with
ts_rank_cd, where the heading path (weight A) counts above the text (B). Highlights are made with
ts_headline for the returned passages only, with private-use markers that are turned into
HeadlineSegments, so the passage's text is never taken for HTML.
"""

import re
from collections.abc import Sequence

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

_SEARCH_SQL = f"""
WITH languages AS (
    SELECT kb.language::regconfig AS config,
           websearch_to_tsquery(kb.language::regconfig, %(query)s) AS query,
           array_agg(kb.id) AS kb_ids
    FROM {KnowledgeBase._meta.db_table} kb
    WHERE %(all_kbs)s OR kb.id = ANY(%(kb_ids)s)
    GROUP BY kb.language
), top AS (
    SELECT hits.*, languages.config, languages.query
    FROM languages
    CROSS JOIN LATERAL (
        SELECT c.id AS chunk_id, c.document_id, d.title AS document_title,
               d.knowledge_base_id, c.heading_path, c.page, c.text,
               ts_rank_cd(c.search_vector, languages.query) AS rank
        FROM {Chunk._meta.db_table} c
        JOIN {Document._meta.db_table} d ON d.id = c.document_id
        WHERE c.search_vector @@ languages.query
          AND d.knowledge_base_id = ANY(languages.kb_ids)
        ORDER BY rank DESC, c.id
        LIMIT %(limit)s
    ) hits
    -- Stop words alone parse to an empty query, which matches nothing.
    WHERE numnode(languages.query) > 0
    ORDER BY hits.rank DESC, hits.chunk_id
    LIMIT %(limit)s
)
SELECT chunk_id, document_id, document_title, knowledge_base_id, heading_path, page, text,
       ts_headline(config, translate(text, %(from)s, %(to)s), query, %(options)s),
       rank
FROM top
ORDER BY rank DESC, chunk_id
"""


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
    params = {
        "query": query,
        "all_kbs": knowledge_bases is None,
        "kb_ids": [kb.pk for kb in knowledge_bases or ()],
        "limit": limit,
        "from": _HEADLINE_FROM,
        "to": _HEADLINE_TO,
        "options": _HEADLINE_OPTIONS,
    }
    with connection.cursor() as cursor:
        cursor.execute(_SEARCH_SQL, params)
        rows = cursor.fetchall()
    return [
        ChunkHit(
            chunk_id=chunk_id,
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
