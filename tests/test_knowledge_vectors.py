"""Vector retrieval fused with full text (knowledge.vectors, knowledge.retrieval), against the
loopback provider's /v1/embeddings (tests.llm_servers.Embedder: a bag of words, synonyms folded
together) and a PostgreSQL with pgvector. Where the configured server has none, these tests run
in a child against an embedded one (tests/pgvector_support.py), never skipped."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse

from accounts.models import User
from agents.models import ModelCall
from agents.selectors import tokens_used_this_month
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.retrieval import retrieval_mode, retrieve, search
from knowledge.services import add_document, index_document_now
from knowledge.vectors import (
    embed_chunks,
    embedding_text,
    index_name,
    pgvector_installed,
    vector_search_statement,
)
from llms.models import AccountLLM
from tenancy import switch
from tests.conftest import signed_in_client
from tests.helpers import loopback_provider
from tests.llm_servers import Embedder, LLMServer, Reply

pytestmark = pytest.mark.pgvector

DIMENSIONS = 32
SYNONYMS = {"automobile": "car", "automobiles": "car", "vehicle": "car", "cars": "car"}

GARAGE = """# Garage

## Repairs

We repair every car brand: bring your car in on a Monday for a quote.

## Opening hours

The workshop opens at nine and closes at five, Tuesday to Saturday.

## Payment

Pay by card or bank transfer when you collect the keys.

## Parts

Spare parts are ordered from the maker and arrive within a week.

## Warranty

Every job carries a twelve month warranty on labour.
"""


@dataclass
class Scene:
    user: User
    provider: AccountLLM
    kb: KnowledgeBase
    llm: LLMServer


def make_scene(user: User, llm: LLMServer, name: str = "Garage") -> Scene:
    provider = loopback_provider(user, llm.openai_url)
    with switch(user):
        kb = KnowledgeBase.objects.create(
            name=name, embedding_llm_id=provider.pk, embedding_model="test-embed"
        )
    return Scene(user, provider, kb, llm)


@pytest.fixture
def scene(alice: User, llm: LLMServer, settings: Any) -> Iterator[Scene]:
    settings.AGENT_LLM_MAX_RETRIES = 0
    llm.embedder = Embedder(dimensions=DIMENSIONS, synonyms=SYNONYMS)
    yield make_scene(alice, llm)


def index(scene: Scene, text: str = GARAGE, title: str = "Garage handbook") -> Document:
    with switch(scene.user):
        document = add_document(knowledge_base=scene.kb, title=title, text=text)
        indexed = index_document_now(document_id=document.pk)
    assert indexed is not None
    return indexed


def embedding_calls() -> list[ModelCall]:
    return list(ModelCall.objects.filter(purpose=ModelCall.Purpose.EMBEDDINGS).order_by("pk"))


def test_the_migration_created_the_extension(db: None) -> None:
    assert pgvector_installed()


def test_a_document_is_embedded_in_batches_counted_in_usage(scene: Scene, settings: Any) -> None:
    settings.KNOWLEDGE_EMBEDDING_BATCH_SIZE = 2
    document = index(scene)

    assert document.status == Document.Status.INDEXED and document.error == ""
    requests = scene.llm.embedding_requests
    assert [len(r.body["input"]) for r in requests] == [2, 2, 1]
    assert all(r.body["model"] == "test-embed" for r in requests)
    assert all(r.body["encoding_format"] == "float" for r in requests)
    # The account's key, decrypted, sent as the SDK sends it.
    assert requests[0].headers["authorization"] == "Bearer sk-loopback-openai-secret-4242"
    with switch(scene.user):
        chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
        sent = [text for r in requests for text in r.body["input"]]
        assert sent == [embedding_text(c.heading_path, c.text) for c in chunks]
        assert [c.embedding for c in chunks] == [
            pytest.approx(scene.llm.embedder.vector(text), abs=1e-6) for text in sent
        ]
        scene.kb.refresh_from_db()
        assert scene.kb.embedding_dimensions == DIMENSIONS
        assert (document.progress_done, document.progress_total) == (5, 5)
        calls = embedding_calls()
        assert [(c.outcome, c.agent_id, c.agent_name, c.model) for c in calls] == [
            (ModelCall.Outcome.OK, None, "Knowledge: Garage", "test-embed")
        ] * 3
        assert [c.input_tokens for c in calls] == [
            sum(len(scene.llm.embedder.words(text)) for text in r.body["input"]) for r in requests
        ]
        assert {c.provider for c in calls} == {"Loopback openai"}
        # The monthly budget counts them.
        assert tokens_used_this_month() == sum(c.input_tokens for c in calls) > 0
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname = %s",
                [index_name(DIMENSIONS)],
            )
            (definition,) = cursor.fetchone() or ("",)
    assert "USING hnsw" in definition and f"vector({DIMENSIONS})" in definition


def test_vectors_find_a_synonym_full_text_cannot_and_both_rank_first(scene: Scene) -> None:
    index(scene)
    with switch(scene.user):
        notes = KnowledgeBase.objects.create(name="Notes")  # no embedding model: text only
        add = add_document(
            knowledge_base=notes, title="Parking", text="The car park is behind the workshop."
        )
        index_document_now(document_id=add.pk)
        assert retrieval_mode(scene.kb).vector and not retrieval_mode(notes).vector

        # "automobile" is in no passage: only the vectors (car ~ automobile) find the repairs.
        by_vector = retrieve(query="automobile", knowledge_bases=[scene.kb], limit=3)
        assert by_vector[0].heading_path == ("Garage", "Repairs")
        assert by_vector[0].found_by == ("vector",)
        assert not any(s.marked for s in by_vector[0].headline)
        assert by_vector[0].headline_html.startswith("We repair every car brand")
        assert len(by_vector) == 3

        hits = retrieve(query="car", knowledge_bases=[scene.kb, notes], limit=5)
    found = {hit.document_title: hit.found_by for hit in hits}
    # Both rankings agree on the repairs: fused, it comes first.
    assert hits[0].heading_path == ("Garage", "Repairs")
    assert hits[0].found_by == ("text", "vector")
    assert any(s.marked and s.text.lower().startswith("car") for s in hits[0].headline)
    # The parking note has no vector: full text alone found it.
    assert found["Parking"] == ("text",)
    assert [hit.rank for hit in hits] == sorted((hit.rank for hit in hits), reverse=True)
    assert hits[0].rank == pytest.approx(2 / 61)


def test_the_search_uses_the_hnsw_index(scene: Scene) -> None:
    index(scene)
    with switch(scene.user), connection.cursor() as cursor:
        # Tiny tables, where scanning and sorting is cheapest: forbid both, so the plan shows
        # whether the index fits the query's expression and predicate at all.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        sql, params = vector_search_statement(
            query_vector=scene.llm.embedder.vector("automobile"),
            knowledge_base_ids=[scene.kb.pk],
            limit=5,
        )
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {index_name(DIMENSIONS)}" in plan, plan


def test_vectors_longer_than_hnsw_takes_are_searched_without_an_index(
    scene: Scene,
) -> None:
    scene.llm.embedder = Embedder(dimensions=2048, synonyms=SYNONYMS)
    index(scene)
    with switch(scene.user):
        (hit,) = retrieve(query="automobile", knowledge_bases=[scene.kb], limit=1)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                "AND indexname LIKE 'knowledge_chunk_embedding_hnsw_%%'"
            )
            assert cursor.fetchone() == (0,)
    assert hit.heading_path == ("Garage", "Repairs") and hit.found_by == ("vector",)


# The key's rejection last: it marks the key, the others must not.
FAILURES = [
    (
        Reply.error(404, "model not found"),
        ModelCall.Outcome.NOT_FOUND,
        "Loopback openai does not know the model “test-embed” (404)",
    ),
    (
        Reply.error(500, "boom"),
        ModelCall.Outcome.UNAVAILABLE,
        "Loopback openai failed (500), retries exhausted",
    ),
    (Reply(drop=True), ModelCall.Outcome.UNAVAILABLE, "could not reach Loopback openai"),
    (
        Reply.error(401, "Incorrect API key provided"),
        ModelCall.Outcome.AUTH,
        "Loopback openai rejected the API key (401)",
    ),
]


def test_a_failed_embedding_leaves_the_document_ready_for_full_text(scene: Scene) -> None:
    for number, (reply, outcome, reason) in enumerate(FAILURES):
        scene.llm.script_embeddings(reply)
        document = index(scene, title=f"Garage {number}")

        assert document.status == Document.Status.INDEXED, reason
        assert document.error == f"Indexed for full-text search; embeddings failed: {reason}"
        with switch(scene.user):
            assert document.chunk_count == 5
            assert not Chunk.objects.filter(embedding__isnull=False).exists()
            call = embedding_calls()[-1]
            assert (call.outcome, call.error, call.input_tokens) == (outcome, reason, 0)
            hits = retrieve(query="warranty labour", knowledge_bases=[scene.kb])
        # Each document's warranty passage, found by full text alone.
        assert {(h.heading_path, h.found_by) for h in hits} == {(("Garage", "Warranty"), ("text",))}
        assert document.pk in {hit.document_id for hit in hits}
        scene.provider.refresh_from_db()
        assert (scene.provider.key_rejected_at is not None) == (outcome == ModelCall.Outcome.AUTH)
    # The document's page says it.
    page = signed_in_client(scene.user).get(
        reverse("knowledge:document_detail", args=[document.pk])
    )
    assert (
        "Indexed for full-text search; embeddings failed: Loopback openai rejected the API key"
        in (page.content.decode())
    )
    # One request per document (none retried), one per search.
    inputs = [r.body["input"] for r in scene.llm.embedding_requests]
    assert len(inputs) == 2 * len(FAILURES)
    assert inputs.count(["warranty labour"]) == len(FAILURES)


def test_a_failure_in_a_later_batch_stores_no_vectors(scene: Scene, settings: Any) -> None:
    settings.KNOWLEDGE_EMBEDDING_BATCH_SIZE = 2
    scene.llm.script_embeddings(Reply(), Reply.error(400, "input is too long"))
    document = index(scene)

    assert document.status == Document.Status.INDEXED
    assert document.error == (
        "Indexed for full-text search; embeddings failed: "
        "Loopback openai refused the request (400): input is too long"
    )
    assert len(scene.llm.embedding_requests) == 2
    with switch(scene.user):
        assert [c.outcome for c in embedding_calls()] == ["ok", "bad_request"]
        assert not Chunk.objects.filter(embedding__isnull=False).exists()


def test_a_query_that_cannot_be_embedded_is_answered_by_full_text(
    scene: Scene, settings: Any
) -> None:
    index(scene)
    settings.KNOWLEDGE_QUERY_EMBEDDING_TIMEOUT_SECONDS = 0.3
    scene.llm.script_embeddings(Reply(delay=1.0), Reply.error(503, "overloaded"))
    with switch(scene.user):
        timed_out = search(query="car repair", knowledge_bases=[scene.kb])
        failed = search(query="car repair", knowledge_bases=[scene.kb])
        calls = embedding_calls()[-2:]
    for result in (timed_out, failed):
        assert result.hits[0].heading_path == ("Garage", "Repairs")
        assert {hit.found_by for hit in result.hits} == {("text",)}
    assert timed_out.notes == (
        "Vector search in Garage failed (Loopback openai did not answer in time): full text only.",
    )
    assert "Loopback openai failed (503)" in failed.notes[0]
    # One request each: a search does not retry.
    assert len(scene.llm.embedding_requests) == 1 + 2
    assert [c.outcome for c in calls] == ["timeout", "unavailable"]


def test_a_used_up_budget_embeds_nothing(scene: Scene) -> None:
    account = scene.user.account
    account.monthly_token_budget = 10
    account.save(update_fields=["monthly_token_budget"])
    with switch(scene.user):
        ModelCall.objects.create(
            agent_name="Helper", provider="x", model="m", input_tokens=10, outcome="ok"
        )
    document = index(scene)
    assert document.status == Document.Status.INDEXED
    assert document.error == (
        "Indexed for full-text search; embeddings failed: "
        "the account's monthly token budget is used up"
    )
    with switch(scene.user):
        result = search(query="car", knowledge_bases=[scene.kb])
    assert result.hits and "budget is used up" in result.notes[0]
    assert scene.llm.embedding_requests == []


def test_a_provider_without_an_embeddings_api_is_a_reason(scene: Scene) -> None:
    anthropic = loopback_provider(scene.user, scene.llm.anthropic_url, kind="anthropic")
    with switch(scene.user):
        KnowledgeBase.objects.filter(pk=scene.kb.pk).update(embedding_llm_id=anthropic.pk)
        scene.kb.refresh_from_db()
        document = add_document(knowledge_base=scene.kb, title="Garage", text=GARAGE)
        embedded = embed_chunks(document=document, chunk_texts=["a passage"])
    assert embedded.vectors is None
    assert embedded.error == (
        "Loopback anthropic has no embeddings API; choose an OpenAI-compatible provider"
    )
    assert scene.llm.requests == []


def test_two_accounts_never_retrieve_each_others_chunks_by_vector(scene: Scene, bob: User) -> None:
    theirs = make_scene(bob, scene.llm)  # a knowledge base with the same name
    index(scene, title="Alice's garage")
    index(
        theirs,
        text="# Garage\n\n## Washing\n\nBob's car wash cleans every car and automobile.",
        title="Bob's garage",
    )
    with switch(scene.user):
        own = set(Chunk.objects.values_list("pk", flat=True))
        hits = retrieve(query="automobile", limit=20)
    # Every one of Alice's passages is near enough to be listed; none of Bob's is.
    assert len(hits) == len(own) == 5
    assert {hit.chunk_id for hit in hits} == own
    assert {hit.document_title for hit in hits} == {"Alice's garage"}
    assert {hit.found_by for hit in hits} == {("vector",)}
    with switch(bob):
        (hit,) = retrieve(query="automobile", limit=20)
    assert (hit.document_title, hit.found_by) == ("Bob's garage", ("text", "vector"))
