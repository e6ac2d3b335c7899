from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models.functions import Lower

HEADING_MAX_LENGTH = 300


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

    class Status(models.TextChoices):
        # Documents added before indexing existed, until they are indexed again.
        STORED = "stored", "Stored, not indexed"
        QUEUED = "queued", "Queued for indexing"
        INDEXING = "indexing", "Indexing"
        INDEXED = "indexed", "Ready"
        FAILED = "failed", "Indexing failed"

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    title = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices)
    filename = models.CharField(max_length=255, blank=True)
    text = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # Why indexing failed, in words a person understands (knowledge.extraction.ExtractionError).
    error = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
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

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_document_ordinal")
        ]
        indexes = [GinIndex(fields=["search_vector"], name="chunk_search")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.ordinal}"
