from django.db import models
from django.db.models.functions import Lower


class KnowledgeBase(models.Model):
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="knowledge_base_name_unique_ci")]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    class Source(models.TextChoices):
        PASTED = "pasted", "Pasted text"
        UPLOAD = "upload", "Uploaded file"

    class Status(models.TextChoices):
        # Indexing (chunking, embedding) comes with the agents' retrieval; until then a document
        # is stored and readable, not searchable.
        STORED = "stored", "Stored, not indexed"
        INDEXED = "indexed", "Indexed"
        FAILED = "failed", "Indexing failed"

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    title = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices)
    filename = models.CharField(max_length=255, blank=True)
    text = models.TextField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STORED)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["knowledge_base", "-created_at"], name="document_kb_recent")
        ]

    def __str__(self) -> str:
        return self.title
