import json
from collections.abc import Sequence
from functools import partial
from typing import Protocol

from django.db import connection, transaction
from django.db.models import Func, IntegerField, Sum
from django.utils import timezone

from core.limits import check_limit, lock_account
from knowledge.models import HEADING_MAX_LENGTH, Chunk, Document, KnowledgeBase


@transaction.atomic
def save_knowledge_base(*, knowledge_base: KnowledgeBase) -> KnowledgeBase:
    if knowledge_base.pk is None:
        lock_account()
        check_limit(
            used=KnowledgeBase.objects.count(),
            setting="LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT",
            what="knowledge bases",
        )
    knowledge_base.full_clean()
    knowledge_base.save()
    return knowledge_base


@transaction.atomic
def delete_knowledge_base(*, knowledge_base: KnowledgeBase) -> None:
    knowledge_base.delete()


def documents_total_bytes() -> int:
    """The UTF-8 size of every document's text in the active account. PostgreSQL's
    octet_length reads a stored text's size from its header, without decompressing it."""
    total = Document.objects.aggregate(
        total=Sum(Func("text", function="octet_length", output_field=IntegerField()))
    )["total"]
    return int(total or 0)


@transaction.atomic
def add_document(
    *, knowledge_base: KnowledgeBase, title: str, text: str, filename: str = ""
) -> Document:
    size = len(text.encode())
    check_limit(used=0, adding=size, setting="LIMIT_DOCUMENT_BYTES", what="bytes per document")
    lock_account()
    check_limit(
        used=Document.objects.count(), setting="LIMIT_DOCUMENTS_PER_ACCOUNT", what="documents"
    )
    check_limit(
        used=documents_total_bytes(),
        adding=size,
        setting="LIMIT_DOCUMENTS_TOTAL_BYTES",
        what="bytes of documents in all",
    )
    document = Document(
        knowledge_base=knowledge_base,
        title=title.strip(),
        text=text,
        filename=filename,
        source=Document.Source.UPLOAD if filename else Document.Source.PASTED,
    )
    document.full_clean()
    document.save()
    queue_indexing(document=document)
    return document


def queue_indexing(*, document: Document) -> None:
    """Index the document in a worker once the current transaction commits (its account's
    schema travels with the task)."""
    from knowledge.tasks import index_document

    document_id = document.pk
    transaction.on_commit(lambda: index_document.delay(document_id))


# How a document's text is read, by the extension it was uploaded with; pasted text is read as
# Markdown, which leaves plain paragraphs plain.
FORMAT_BY_EXTENSION = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
CHUNK_TARGET_TOKENS = 300
CHUNK_OVERLAP_TOKENS = 40


def document_format(document: Document) -> str:
    name = document.filename.lower()
    if not name:
        return "markdown"
    return next((f for ext, f in FORMAT_BY_EXTENSION.items() if name.endswith(ext)), "text")


def index_document_now(*, document_id: int) -> Document | None:
    """Extract, chunk and store one document's chunks, moving its state along (indexing, then
    ready or failed with a reason). None when the document is gone. Its chunks are replaced
    in one transaction: a search sees the old ones or the new ones, never a mix."""
    from knowledge.chunking import chunk
    from knowledge.extraction import ExtractionError, extract_text
    from knowledge.vectors import embed_chunks, embedding_text

    updated = Document.objects.filter(pk=document_id).update(
        status=Document.Status.INDEXING, error=""
    )
    if not updated:
        return None
    document = Document.objects.get(pk=document_id)
    try:
        extracted = extract_text(document.text, format=document_format(document))
        chunks = chunk(
            extracted.blocks,
            target_tokens=CHUNK_TARGET_TOKENS,
            overlap_tokens=CHUNK_OVERLAP_TOKENS,
        )
    except ExtractionError as exc:
        Document.objects.filter(pk=document_id).update(
            status=Document.Status.FAILED, error=exc.reason, chunk_count=0
        )
        return Document.objects.filter(pk=document_id).first()
    # Vectors, when the knowledge base has an embedding model (knowledge.vectors); a failure
    # there still leaves the document ready for full-text search, saying why it has no vectors.
    embedded = embed_chunks(
        document=document,
        chunk_texts=[embedding_text(c.heading_path, c.text) for c in chunks],
        progress_callback=partial(_embedding_progress, document_id),
    )
    with transaction.atomic():
        try:
            stored = replace_chunks(document=document, chunks=chunks, embeddings=embedded.vectors)
        except Document.DoesNotExist:
            return None
        Document.objects.filter(pk=document_id).update(
            status=Document.Status.INDEXED,
            chunk_count=stored,
            indexed_at=timezone.now(),
            error=embedding_error(embedded.error),
        )
    return Document.objects.filter(pk=document_id).first()


def _embedding_progress(document_id: int, done: int, total: int) -> None:
    Document.objects.filter(pk=document_id).update(progress_done=done, progress_total=total)


def embedding_error(reason: str) -> str:
    """Document.error of a document indexed without its vectors ("" when none failed)."""
    return f"Indexed for full-text search; embeddings failed: {reason}" if reason else ""


@transaction.atomic
def delete_document(*, document: Document) -> None:
    document.delete()


class ChunkLike(Protocol):
    """What replace_chunks reads of a chunk (knowledge.chunking.ChunkText)."""

    @property
    def text(self) -> str: ...
    @property
    def heading_path(self) -> tuple[str, ...]: ...
    @property
    def page(self) -> int | None: ...
    @property
    def tokens(self) -> int: ...
    @property
    def ordinal(self) -> int: ...


def _clean_text(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and jsonb refuses \u0000: a stray one in an extracted
    # file must not fail the whole document.
    return text.replace("\x00", "")


# One statement stores every chunk: the rows arrive as one JSON array (a jagged heading path does
# not fit unnest()), and each row's search vector is computed right there with its knowledge
# base's configuration, the heading path weighted above the text.
_INSERT_CHUNKS = f"""
INSERT INTO {Chunk._meta.db_table}
    (document_id, ordinal, text, heading_path, page, tokens, embedding, search_vector)
SELECT d.id, c.ordinal, c.text, c.heading_path, c.page, c.tokens, c.embedding,
       setweight(to_tsvector(kb.language::regconfig,
                             array_to_string(c.heading_path, ' ')), 'A')
       || setweight(to_tsvector(kb.language::regconfig, c.text), 'B')
FROM {Document._meta.db_table} d
JOIN {KnowledgeBase._meta.db_table} kb ON kb.id = d.knowledge_base_id
CROSS JOIN jsonb_to_recordset(%s::jsonb)
    AS c(ordinal integer, text text, heading_path varchar[], page integer, tokens integer,
         embedding real[])
WHERE d.id = %s
"""


@transaction.atomic
def replace_chunks(
    *,
    document: Document,
    chunks: Sequence[ChunkLike],
    embeddings: Sequence[Sequence[float]] | None = None,
) -> int:
    """Make `chunks` the document's only chunks, indexed for full-text search, with their
    `embeddings` (one per chunk, in order; knowledge.vectors.embed_chunks) when given; returns
    how many were stored. All or nothing: if anything fails, the document keeps its old chunks.

    Raises Document.DoesNotExist when the document was deleted meanwhile.
    """
    # The document's row lock queues a concurrent re-index of the same document behind this one
    # (both would delete, then collide on (document, ordinal)) and keeps it from being deleted
    # between the delete and the insert.
    if not list(Document.objects.select_for_update().filter(pk=document.pk).values_list("pk")):
        raise Document.DoesNotExist(f"document {document.pk} no longer exists")
    Chunk.objects.filter(document_id=document.pk).delete()
    if not chunks:
        return 0
    if embeddings is not None and len(embeddings) != len(chunks):
        raise ValueError(f"{len(embeddings)} embeddings for {len(chunks)} chunks")
    rows = [
        {
            "ordinal": chunk.ordinal,
            "text": _clean_text(chunk.text),
            # A "heading" longer than this is a paragraph the extractor took for one.
            "heading_path": [
                _clean_text(heading)[:HEADING_MAX_LENGTH] for heading in chunk.heading_path
            ],
            "page": chunk.page,
            "tokens": chunk.tokens,
            "embedding": list(embeddings[index]) if embeddings is not None else None,
        }
        for index, chunk in enumerate(chunks)
    ]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_CHUNKS, [json.dumps(rows), document.pk])
        return cursor.rowcount
