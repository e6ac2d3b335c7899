"""A document added to a knowledge base is queued, then indexed by a worker in its account's
schema: extracted by its format, chunked, stored, searchable; or failed with a reason."""

import time
from datetime import UTC, datetime

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.selectors import search_chunks
from knowledge.services import add_document, index_document_now
from tenancy import switch
from tests.workers import threads_worker

MARKDOWN = """# Runbook

Intro words.

## Deploys

Deploys happen on Fridays, after the database upgrade.

## Backups

Backups run nightly and are kept for thirty days.
"""


@pytest.fixture
def handbook(alice: User) -> KnowledgeBase:
    with switch(alice):
        return KnowledgeBase.objects.create(name="Handbook")


def test_a_pasted_document_is_queued_then_indexed(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        document = add_document(knowledge_base=handbook, title="Runbook", text=MARKDOWN)
        assert document.status == Document.Status.QUEUED
        indexed = index_document_now(document_id=document.pk)
        assert indexed is not None
        assert indexed.status == Document.Status.INDEXED, indexed.error
        assert indexed.chunk_count == Chunk.objects.filter(document=document).count() > 0
        assert indexed.indexed_at is not None and indexed.indexed_at <= datetime.now(UTC)
        (hit, *_) = search_chunks(query="deploys friday")
    assert hit.heading_path == ("Runbook", "Deploys")
    assert hit.document_id == document.pk


def test_an_uploaded_html_page_is_read_as_html(alice: User, handbook: KnowledgeBase) -> None:
    page = (
        "<html><head><title>Ops</title><script>var secret = 1;</script></head><body>"
        "<nav>Home | About</nav><main><h1>Ops</h1><h2>Paging</h2>"
        "<p>The on-call engineer answers pages within fifteen minutes.</p></main></body></html>"
    )
    with switch(alice):
        document = add_document(
            knowledge_base=handbook, title="Ops", text=page, filename="ops.html"
        )
        indexed = index_document_now(document_id=document.pk)
        assert indexed is not None and indexed.status == Document.Status.INDEXED
        texts = " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))
        (hit,) = search_chunks(query="on-call pages")
    assert "fifteen minutes" in texts
    assert "secret" not in texts and "<p>" not in texts and "About" not in texts
    assert hit.heading_path == ("Ops", "Paging")


def test_a_document_without_readable_text_fails_with_a_reason(
    alice: User, handbook: KnowledgeBase
) -> None:
    with switch(alice):
        document = add_document(
            knowledge_base=handbook,
            title="Empty page",
            text="<html><body><script>only(code)</script></body></html>",
            filename="empty.html",
        )
        failed = index_document_now(document_id=document.pk)
        assert failed is not None
        assert failed.status == Document.Status.FAILED
        assert failed.error == "The document has no readable text."
        assert not Chunk.objects.filter(document=document).exists()


def test_indexing_again_replaces_the_chunks(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        document = add_document(knowledge_base=handbook, title="Runbook", text=MARKDOWN)
        index_document_now(document_id=document.pk)
        Document.objects.filter(pk=document.pk).update(
            text="# Runbook\n\nEverything moved to Mondays."
        )
        again = index_document_now(document_id=document.pk)
        assert again is not None and again.chunk_count == 1
        assert search_chunks(query="friday") == []
        assert len(search_chunks(query="mondays")) == 1


def test_a_deleted_document_is_not_indexed(alice: User, handbook: KnowledgeBase) -> None:
    with switch(alice):
        document = add_document(knowledge_base=handbook, title="Gone", text=MARKDOWN)
        document_id = document.pk
        document.delete()
        assert index_document_now(document_id=document_id) is None


def test_a_worker_indexes_what_the_form_added_and_the_page_says_so(
    clean_schemas: None, alice_client: Client, alice: User
) -> None:
    """Through the page and a real Celery worker: the task carries the account's schema."""
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Handbook")
    with threads_worker(2, queues=("celery",)):
        response = alice_client.post(
            reverse("knowledge:document_create", args=[kb.pk]),
            {"title": "Runbook", "text": MARKDOWN},
        )
        assert response.status_code == 302
        with switch(alice):
            document = Document.objects.get()
        deadline = datetime.now(UTC).timestamp() + 20
        while datetime.now(UTC).timestamp() < deadline:
            with switch(alice):
                document.refresh_from_db()
            if document.status in (Document.Status.INDEXED, Document.Status.FAILED):
                break
            time.sleep(0.05)
    assert document.status == Document.Status.INDEXED, document.error
    page = alice_client.get(reverse("knowledge:document_detail", args=[document.pk]))
    assert "Ready</span>" in page.content.decode()
    assert f"{document.chunk_count} passage" in page.content.decode()
