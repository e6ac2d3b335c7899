"""Retrieval without vectors (no embedding model, or no pgvector), the fusion's arithmetic, and
the vector tests' run on a server with pgvector when this one has none (tests/pgvector_support.py).
These run on any PostgreSQL."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from django.db import connection

from accounts.models import User
from agents.models import ModelCall
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.retrieval import RRF_K, retrieval_mode, retrieve, rrf_scores, search
from knowledge.services import add_document, index_document_now
from knowledge.vectors import pgvector_installed
from tenancy import switch
from tests.helpers import loopback_provider
from tests.llm_servers import Embedder, LLMServer
from tests.pgvector_support import run_pgvector_tests_elsewhere, server_has_pgvector

TEXT = """# Garage

## Repairs

We repair every car brand: bring your car in on a Monday for a quote.

## Payment

Pay by card or bank transfer when you collect the keys.
"""


def test_reciprocal_rank_fusion_adds_one_over_k_plus_rank() -> None:
    scores = rrf_scores([[7, 8, 9], [9, 7]])
    assert RRF_K == 60
    assert scores == {
        7: pytest.approx(1 / 61 + 1 / 62),
        8: pytest.approx(1 / 62),
        9: pytest.approx(1 / 63 + 1 / 61),
    }
    # Found by both, even lower in each, beats first in one alone.
    assert rrf_scores([[1, 2], [3, 2]])[2] > rrf_scores([[1, 2], [3, 2]])[1]


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_the_loopback_embeddings_speak_what_the_sdk_reads(llm: LLMServer, encoding: str) -> None:
    """The scripted /v1/embeddings against the real SDK (its default asks for base64)."""
    client = openai.OpenAI(base_url=llm.openai_url, api_key="k", max_retries=0)
    texts = ["a car", "an automobile", ""]
    if encoding == "base64":
        answer = client.embeddings.create(model="test-embed", input=texts)
    else:
        answer = client.embeddings.create(model="test-embed", input=texts, encoding_format="float")
    assert llm.requests[0].body["encoding_format"] == encoding
    vectors = [item.embedding for item in answer.data]
    assert vectors == [
        pytest.approx(llm.embedder.vector(t), abs=1e-6) for t in ["a car", "an automobile", ""]
    ]
    assert answer.usage.prompt_tokens == 4
    assert all(len(v) == 64 for v in vectors)


def test_the_loopback_embedder_puts_synonyms_together() -> None:
    embedder = Embedder(dimensions=32, synonyms={"automobile": "car"})

    def cosine(a: str, b: str) -> float:
        return sum(x * y for x, y in zip(embedder.vector(a), embedder.vector(b), strict=True))

    assert cosine("automobile", "car") == pytest.approx(1.0)
    assert cosine("car repairs", "repairs of a car") > cosine("car repairs", "opening hours")
    assert embedder.vector("") == [0.0] * 31 + [1.0]


def index(user: User, kb: KnowledgeBase) -> Document:
    with switch(user):
        document = add_document(knowledge_base=kb, title="Garage", text=TEXT)
        indexed = index_document_now(document_id=document.pk)
    assert indexed is not None and indexed.status == Document.Status.INDEXED
    return indexed


def test_without_an_embedding_model_search_is_full_text(alice: User, llm: LLMServer) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Garage")
    document = index(alice, kb)
    with switch(alice):
        result = search(query="car", knowledge_bases=[kb])
        assert retrieval_mode(kb).reason == (
            "Full-text search only: this knowledge base has no embedding model."
        )
        assert not Chunk.objects.filter(embedding__isnull=False).exists()
        assert not ModelCall.objects.exists()
    assert document.error == ""
    assert [(h.heading_path, h.found_by) for h in result.hits] == [
        (("Garage", "Repairs"), ("text",))
    ]
    assert result.notes == ()
    assert llm.requests == []


@pytest.fixture
def without_pgvector(db: None) -> Iterator[None]:
    """This test's transaction without the extension (it is rolled back with the test): the
    path of a server that has none, on any server."""
    with connection.cursor() as cursor:
        cursor.execute("DROP EXTENSION IF EXISTS vector CASCADE")
    yield


def test_without_pgvector_a_knowledge_base_with_a_model_is_full_text_only(
    alice: User, llm: LLMServer, without_pgvector: None
) -> None:
    provider = loopback_provider(alice, llm.openai_url)
    with switch(alice):
        assert not pgvector_installed()
        kb = KnowledgeBase.objects.create(
            name="Garage", embedding_llm_id=provider.pk, embedding_model="test-embed"
        )
    document = index(alice, kb)
    with switch(alice):
        hits = retrieve(query="car", knowledge_bases=[kb])
        mode = retrieval_mode(kb)
        assert not ModelCall.objects.exists()
    # Nothing asked of the provider: vectors could not be searched anyway.
    assert llm.requests == []
    assert document.error == ""
    assert [hit.found_by for hit in hits] == [("text",)]
    assert not mode.vector
    assert mode.reason == (
        "Full-text search only: the database has no pgvector extension "
        "(see the README, “Vector search”)."
    )


VECTOR_TESTS = "tests/test_knowledge_vectors.py"


def test_the_vector_tests_pass_on_a_server_with_pgvector(request: Any) -> None:
    """On a server with pgvector they run in this very run, and the migration made the
    extension; on one without, they run here, in a child, against an embedded PostgreSQL."""
    if server_has_pgvector():
        request.getfixturevalue("db")
        assert pgvector_installed()
        return
    # Short: the server's Unix socket lives in it.
    directory = Path(tempfile.mkdtemp(prefix="pgv-", dir="/tmp"))
    try:
        child = run_pgvector_tests_elsewhere([VECTOR_TESTS], directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert child.returncode == 0, child.output[-5000:]
    assert child.tests >= 10, child.output[-5000:]
    assert (child.failures, child.errors, child.skipped) == (0, 0, 0), child.output[-5000:]
