from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models.functions import Lower

HEADING_MAX_LENGTH = 300


class RealField(models.FloatField):
    """A single-precision float (PostgreSQL real): half the bytes of a double per dimension."""

    def db_type(self, connection: object) -> str:
        return "real"


class Language(models.TextChoices):
    # Each value is a text search configuration PostgreSQL ships (pg_ts_config): it is cast
    # to regconfig when chunks are indexed and searched, so only these may be stored.
    SIMPLE = "simple", "Any language (exact words, no stemming)"
    DANISH = "danish", "Danish"
    DUTCH = "dutch", "Dutch"
    ENGLISH = "english", "English"
    FINNISH = "finnish", "Finnish"
    FRENCH = "french", "French"
    GERMAN = "german", "German"
    HUNGARIAN = "hungarian", "Hungarian"
    ITALIAN = "italian", "Italian"
    NORWEGIAN = "norwegian", "Norwegian"
    PORTUGUESE = "portuguese", "Portuguese"
    ROMANIAN = "romanian", "Romanian"
    RUSSIAN = "russian", "Russian"
    SPANISH = "spanish", "Spanish"
    SWEDISH = "swedish", "Swedish"
    TURKISH = "turkish", "Turkish"


class KnowledgeBase(models.Model):
    Language = Language

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    language = models.CharField(
        max_length=20,
        choices=Language.choices,
        default=Language.ENGLISH,
        help_text="How words are matched: searching “run” finds “running” in English.",
    )
    # Vector retrieval, when set (and the database has pgvector): the account's
    # OpenAI-compatible provider (public schema, no constraint crosses schemas; llms.services
    # refuses to delete a provider in use) and the embedding model it serves. The dimensions are
    # learned from the provider's first answer; an HNSW index per dimension is made on demand.
    embedding_llm = models.ForeignKey(
        "llms.AccountLLM",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="embedding provider",
    )
    embedding_model = models.CharField(
        max_length=200,
        blank=True,
        help_text="e.g. text-embedding-3-small or nomic-embed-text. Empty: full-text search only.",
    )
    embedding_dimensions = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="knowledge_base_name_unique_ci"),
            # A name outside the list would make every ::regconfig cast of it fail.
            models.CheckConstraint(
                condition=models.Q(language__in=Language.values),
                name="knowledge_base_language_known",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    class Source(models.TextChoices):
        PASTED = "pasted", "Pasted text"
        UPLOAD = "upload", "Uploaded file"
        URL = "url", "Imported from a URL"

    class Status(models.TextChoices):
        # Documents added before indexing existed, until they are indexed again.
        STORED = "stored", "Stored, not indexed"
        QUEUED = "queued", "Queued for indexing"
        FETCHING = "fetching", "Fetching"
        EXTRACTING = "extracting", "Extracting text"
        INDEXING = "indexing", "Indexing"
        INDEXED = "indexed", "Ready"
        FAILED = "failed", "Indexing failed"

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    title = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices)
    filename = models.CharField(max_length=255, blank=True)
    # Where an imported document came from (Source.URL), after redirects.
    url = models.URLField(max_length=2000, blank=True)
    # The file as uploaded or fetched (a PDF, an HTML page...), kept so the document can be
    # extracted again; empty for pasted text. `text` is the extracted text once indexed.
    original = models.BinaryField(null=True, blank=True, editable=False)
    content_type = models.CharField(max_length=100, blank=True)
    text = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Why indexing failed, in words a person understands (knowledge.extraction.ExtractionError).
    error = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    # "indexing n/m": passages done of passages to do, while indexing.
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    indexed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["knowledge_base", "-created_at"], name="document_kb_recent")
        ]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A passage of a document, as retrieval finds and cites it.

    Written only by knowledge.services.replace_chunks, which computes `search_vector` in the
    database with the knowledge base's language (the heading path weighted A, the text B).
    """

    # The unique (document, ordinal) index serves lookups by document: no index of its own.
    document = models.ForeignKey(
        Document, on_delete=models.CASCADE, related_name="chunks", db_index=False
    )
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    heading_path = ArrayField(models.CharField(max_length=HEADING_MAX_LENGTH), default=list)
    page = models.PositiveIntegerField(null=True, blank=True)
    tokens = models.PositiveIntegerField()
    search_vector = SearchVectorField(editable=False)
    # The passage's embedding (float4[]; knowledge.vectors casts it to pgvector's type in its
    # queries and per-dimension HNSW indexes, so this column exists with or without pgvector).
    embedding = ArrayField(RealField(), null=True, blank=True, editable=False)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_document_ordinal")
        ]
        indexes = [GinIndex(fields=["search_vector"], name="chunk_search")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
