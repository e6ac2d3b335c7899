import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Func, IntegerField, QuerySet, Sum
from django.utils import timezone

from core.limits import LimitReached, check_limit, lock_account
from knowledge.models import HEADING_MAX_LENGTH, Chunk, Document, KnowledgeBase

if TYPE_CHECKING:
    from knowledge.chunking import ChunkText
    from knowledge.extraction import Block, Extracted
    from knowledge.vectors import EmbeddedChunks

logger = logging.getLogger(__name__)


# What a knowledge base's chunks are computed with: changing any of these makes them stale.
_INDEX_SETTINGS = ("language", "embedding_llm_id", "embedding_model")


@transaction.atomic
def save_knowledge_base(*, knowledge_base: KnowledgeBase) -> KnowledgeBase:
    """Create or update a knowledge base. When its language or embedding model changes, its
    documents are indexed again: their full-text vectors (and embeddings) were made with the old
    one."""
    before = None
    if knowledge_base.pk is None:
        lock_account()
        check_limit(
            used=KnowledgeBase.objects.count(),
            setting="LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT",
            what="knowledge bases",
        )
    else:
        before = KnowledgeBase.objects.filter(pk=knowledge_base.pk).values(*_INDEX_SETTINGS).first()
    knowledge_base.full_clean()
    knowledge_base.save()
    if before is not None and any(
        before[name] != getattr(knowledge_base, name) for name in _INDEX_SETTINGS
    ):
        if before["embedding_model"] != knowledge_base.embedding_model or (
            before["embedding_llm_id"] != knowledge_base.embedding_llm_id
        ):
            # Learned again from the new model's first answer.
            KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(embedding_dimensions=None)
            knowledge_base.embedding_dimensions = None
        reindex_knowledge_base(knowledge_base=knowledge_base)
    return knowledge_base


@transaction.atomic
def delete_knowledge_base(*, knowledge_base: KnowledgeBase) -> None:
    knowledge_base.delete()


def documents_total_bytes() -> int:
    """The bytes every document of the active account holds: its text (UTF-8) plus the file
    it was uploaded or fetched as. PostgreSQL's octet_length reads a stored value's size from
    its header, without decompressing it."""
    total = Document.objects.aggregate(
        text=Sum(Func("text", function="octet_length", output_field=IntegerField())),
        original=Sum(Func("original", function="octet_length", output_field=IntegerField())),
    )
    return int(total["text"] or 0) + int(total["original"] or 0)


def _check_total_bytes(adding: int) -> None:
    check_limit(
        used=documents_total_bytes(),
        adding=adding,
        setting="LIMIT_DOCUMENTS_TOTAL_BYTES",
        what="bytes of documents in all",
    )


@transaction.atomic
def add_document(
    *,
    knowledge_base: KnowledgeBase,
    title: str,
    text: str = "",
    filename: str = "",
    data: bytes | None = None,
    content_type: str = "",
    url: str = "",
) -> Document:
    """Add a document and queue it for indexing. It is one of: pasted `text`; an uploaded file
    (`data` with its `filename` and `content_type`), extracted by the worker; or a `url` the
    worker fetches (the title, if empty, becomes the page's own)."""
    if sum((bool(text), data is not None, bool(url))) != 1:
        raise ValueError("a document is pasted text, an uploaded file or a URL: exactly one")
    size = len(data) if data is not None else len(text.encode())
    check_limit(used=0, adding=size, setting="LIMIT_DOCUMENT_BYTES", what="bytes per document")
    lock_account()
    check_limit(
        used=Document.objects.count(), setting="LIMIT_DOCUMENTS_PER_ACCOUNT", what="documents"
    )
    _check_total_bytes(size)
    if url:
        source = Document.Source.URL
    elif data is not None or filename:
        source = Document.Source.UPLOAD
    else:
        source = Document.Source.PASTED
    document = Document(
        knowledge_base=knowledge_base,
        title=(title.strip() or url)[:200],
        text=text,
        filename=filename,
        original=data,
        content_type=content_type[:100],
        url=url,
        source=source,
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


def _requeue(documents: QuerySet[Document]) -> int:
    ids = list(documents.values_list("pk", flat=True))
    Document.objects.filter(pk__in=ids).update(
        status=Document.Status.QUEUED, error="", progress_done=0, progress_total=0
    )
    for document_id in ids:
        queue_indexing(document=Document(pk=document_id))
    return len(ids)


@transaction.atomic
def reindex_document(*, document: Document) -> None:
    """Index the document again from what it was made of (its file, its text; a URL whose fetch
    failed is fetched again). Its passages stay searchable until the new ones replace them."""
    _requeue(Document.objects.filter(pk=document.pk))
    document.refresh_from_db()


@transaction.atomic
def reindex_knowledge_base(*, knowledge_base: KnowledgeBase) -> int:
    """Queue every document of the knowledge base for indexing again; returns how many."""
    return _requeue(Document.objects.filter(knowledge_base=knowledge_base))


# How a document's text is read, by the extension it was uploaded with; pasted text is read as
# Markdown, which leaves plain paragraphs plain.
FORMAT_BY_EXTENSION = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
CHUNK_TARGET_TOKENS = 300
CHUNK_OVERLAP_TOKENS = 40
# A URL import waits this long for the page (connect, and the whole body).
FETCH_TIMEOUT_SECONDS = 30.0
# What a URL import may be: what knowledge.extraction reads.
FETCHED_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "text/markdown",
        "text/x-markdown",
        "application/pdf",
    }
)


def document_format(document: Document) -> str:
    """The format of a document's text when it has no original (pasted, or uploaded before
    originals were kept)."""
    name = document.filename.lower()
    if not name:
        return "markdown"
    return next((f for ext, f in FORMAT_BY_EXTENSION.items() if name.endswith(ext)), "text")


class IndexingError(Exception):
    """Why a document cannot be indexed, in words for the person who added it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _set(document_id: int, **fields: object) -> int:
    """Move a document along, visible at once to the pages that show it (outside any
    transaction of the pipeline)."""
    return Document.objects.filter(pk=document_id).update(**fields)


def index_document_now(*, document_id: int) -> Document | None:
    """Index one document, moving its state along for the knowledge base page:
    queued -> fetching (URL imports not yet fetched) -> extracting -> indexing n/m -> ready, or
    failed with a reason a person understands. None when the document is gone.

    Each step is a function of its own; the chunks are replaced in one transaction, so a search
    sees the old ones or the new ones, never a mix."""
    from knowledge.vectors import embed_chunks, embedding_text

    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return None
    try:
        if document.source == Document.Source.URL and document.original is None:
            _set(document_id, status=Document.Status.FETCHING, error="")
            document = _fetch_step(document)
        _set(document_id, status=Document.Status.EXTRACTING, error="")
        extracted = _extract_step(document)
        chunks = _chunk_step(extracted)
        _set(
            document_id,
            status=Document.Status.INDEXING,
            progress_done=0,
            progress_total=len(chunks),
        )
        # Vectors, when the knowledge base has an embedding model (knowledge.vectors), batch by
        # batch; a failure there still leaves the document ready for full-text search, saying
        # why it has no vectors.
        embedded = embed_chunks(
            document=document,
            chunk_texts=[embedding_text(c.heading_path, c.text) for c in chunks],
            progress_callback=lambda done, total: report_progress(
                document_id=document_id, done=done
            ),
        )
        stored = _store_step(document, extracted, chunks, embedded)
    except IndexingError as exc:
        _fail(document_id, exc.reason)
        return Document.objects.filter(pk=document_id).first()
    except Document.DoesNotExist:
        return None
    except Exception:
        # Never left "indexing" for ever: the page says it failed and offers to try again.
        logger.exception("indexing document %s failed", document_id)
        _fail(document_id, "Indexing stopped on an unexpected error. Re-index to try again.")
        return Document.objects.filter(pk=document_id).first()
    if stored is None:
        return None
    return Document.objects.filter(pk=document_id).first()


def report_progress(*, document_id: int, done: int) -> None:
    """How many of a document's passages are indexed so far ("indexing n/m" on its page)."""
    _set(document_id, progress_done=done)


@transaction.atomic
def _fail(document_id: int, reason: str) -> None:
    """A failed document has no passages: none of an old version is found after it failed."""
    Chunk.objects.filter(document_id=document_id).delete()
    _set(
        document_id,
        status=Document.Status.FAILED,
        error=reason,
        chunk_count=0,
        progress_done=0,
        progress_total=0,
    )


def _fetch_step(document: Document) -> Document:
    """Download a URL import through the address policy, keeping the body as its original."""
    from llms.fetch import FetchError, fetch_bytes

    limit = settings.LIMIT_DOCUMENT_BYTES
    try:
        download = fetch_bytes(
            document.url,
            timeout=FETCH_TIMEOUT_SECONDS,
            max_bytes=limit,
            content_types=FETCHED_TYPES,
            refusal="only web pages (HTML), PDF and plain text can be imported",
            accept="text/html,application/xhtml+xml,application/pdf,text/plain;q=0.9,*/*;q=0.1",
        )
    except FetchError as exc:
        raise IndexingError(str(exc)) from None
    if download.truncated:
        raise IndexingError(
            f"The page is larger than the limit of {limit:,} bytes per document "
            "(LIMIT_DOCUMENT_BYTES)."
        )
    content_type = download.content_type
    if download.charset:
        content_type += f"; charset={download.charset}"
    with transaction.atomic():
        lock_account()
        try:
            _check_total_bytes(len(download.body))
        except LimitReached as exc:
            raise IndexingError(exc.messages[0]) from None
        fields: dict[str, object] = {}
        if document.title == document.url[:200]:
            # Untitled so far: the address after redirects, until the page's own title is read.
            fields["title"] = document.title = download.url[:200]
        updated = _set(
            document.pk,
            original=download.body,
            content_type=content_type[:100],
            url=download.url[:2000],
            **fields,
        )
    if not updated:
        raise Document.DoesNotExist(f"document {document.pk} no longer exists")
    document.original = download.body
    document.content_type = content_type[:100]
    document.url = download.url[:2000]
    return document


def _extract_step(document: Document) -> "Extracted":
    """The document's blocks: from its original file when it has one, else from its text."""
    from knowledge.extraction import ExtractionError, extract, extract_text

    try:
        if document.original is not None:
            return extract(
                data=bytes(document.original),
                filename=document.filename,
                content_type=document.content_type,
            )
        return extract_text(document.text, format=document_format(document))
    except ExtractionError as exc:
        raise IndexingError(exc.reason) from None


def _chunk_step(extracted: "Extracted") -> "list[ChunkText]":
    from knowledge.chunking import chunk

    chunks = chunk(
        extracted.blocks, target_tokens=CHUNK_TARGET_TOKENS, overlap_tokens=CHUNK_OVERLAP_TOKENS
    )
    limit = settings.LIMIT_CHUNKS_PER_DOCUMENT
    if len(chunks) > limit:
        raise IndexingError(
            f"The document is too long to index: it makes {len(chunks):,} passages, more than "
            f"the limit of {limit:,} per document (LIMIT_CHUNKS_PER_DOCUMENT). Split it into "
            "smaller documents."
        )
    return chunks


def _store_step(
    document: Document,
    extracted: "Extracted",
    chunks: "Sequence[ChunkLike]",
    embedded: "EmbeddedChunks",
) -> int | None:
    """Store the chunks, and the text read from a file, and mark the document ready: in one
    transaction. None when the document was deleted meanwhile."""
    fields: dict[str, object] = {}
    if document.original is not None:
        fields["text"] = _clean_text(blocks_text(extracted.blocks))
        if document.source == Document.Source.URL and document.title == document.url[:200]:
            # Imported without a title of its own: the page's, else the address stays.
            fields["title"] = (extracted.title.strip() or document.title)[:200]
    with transaction.atomic():
        try:
            stored = replace_chunks(document=document, chunks=chunks, embeddings=embedded.vectors)
        except Document.DoesNotExist:
            return None
        _set(
            document.pk,
            status=Document.Status.INDEXED,
            error=embedding_error(embedded.error),
            chunk_count=stored,
            progress_done=len(chunks),
            progress_total=len(chunks),
            indexed_at=timezone.now(),
            **fields,
        )
    return stored


def blocks_text(blocks: "Sequence[Block]") -> str:
    """Extracted blocks as readable text (Markdown-like): what a document's page shows of a file."""
    lines: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            lines.append("#" * max(1, min(block.level, 6)) + " " + block.text)
        elif block.kind == "list_item":
            lines.append("- " + block.text)
        elif block.kind == "code":
            lines.append("```\n" + block.text + "\n```")
        else:
            lines.append(block.text)
    return "\n\n".join(lines)


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
