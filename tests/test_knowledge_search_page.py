"""A knowledge base's search page (knowledge.views.kb_search): ranked passages with highlights,
which ranking found each, the retrieval mode; bad input; another account's knowledge base."""

import re
from typing import Any

from django.template.loader import render_to_string
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.models import User
from knowledge.chunking import ChunkText
from knowledge.models import Document, KnowledgeBase
from knowledge.retrieval import retrieval_mode
from knowledge.selectors import MAX_QUERY_LENGTH
from knowledge.services import replace_chunks
from knowledge.types import ChunkHit, HeadlineSegment
from knowledge.views import KB_SEARCH_RESULTS
from tenancy import switch


def passage(ordinal: int, text: str, *headings: str, page: int | None = None) -> ChunkText:
    return ChunkText(
        text=text, heading_path=headings, page=page, tokens=len(text.split()), ordinal=ordinal
    )


def handbook(user: User, *, own: str = "") -> dict[str, Any]:
    with switch(user):
        kb = KnowledgeBase.objects.create(name="Handbook")
        doc = Document.objects.create(
            knowledge_base=kb,
            title="Operations guide",
            source=Document.Source.PASTED,
            text="…",
            status=Document.Status.INDEXED,
        )
        replace_chunks(
            document=doc,
            chunks=[
                passage(0, "Welcome to the operations guide.", "Operations"),
                passage(
                    1,
                    "Deploys happen on Fridays, after the database upgrade. Use <b>care</b> & "
                    f"keep the rollback script at hand.{own}",
                    "Operations",
                    "Releases",
                    page=3,
                ),
            ],
        )
    return {"kb": kb, "doc": doc}


def results(page: str) -> str:
    """What a search page shows after its search box."""
    return page.split('role="search"', 1)[1].split("</form>", 1)[1]


def url(kb: KnowledgeBase, query: str | None = None) -> str:
    base = reverse("knowledge:kb_search", args=[kb.pk])
    return base if query is None else f"{base}?{_q(query)}"


def _q(query: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"q": query})


def test_the_page_shows_ranked_passages_with_highlights(alice: User, alice_client: Client) -> None:
    w = handbook(alice)
    response = alice_client.get(url(w["kb"], "deploys friday"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "1 passage, best first." in page
    # The document's title leads to the passage on its page.
    assert f'href="/knowledge/documents/{w["doc"].pk}/#chunk-1"' in page
    assert "Operations \u203a Releases · page 3" in page
    # Highlights: the matches marked, the text escaped (the passage holds "<b>care</b> &").
    assert "<mark>Deploys</mark>" in page and "<mark>Fridays</mark>" in page
    assert "&lt;b&gt;care&lt;/b&gt; &amp;" in page and "<b>care</b>" not in page
    # Which ranking found it, in words a screen reader says too.
    assert re.search(
        r'<span class="badge found found-text" title="Found by full-text search only">'
        r'<span class="visually-hidden">Found by </span>full text</span>',
        page,
    )
    # The link agents cite, and how this knowledge base is searched.
    assert f'href="/k/{w["doc"].pk}/1"' in page
    assert retrieval_mode(w["kb"]).reason in page
    assert "Full-text search only: this knowledge base has no embedding model." in page
    assert 'value="deploys friday"' in page
    assert "<title>deploys friday · Search Handbook" in page


def test_an_empty_search_shows_the_box_and_no_results(alice: User, alice_client: Client) -> None:
    w = handbook(alice)
    for address in (url(w["kb"]), url(w["kb"], ""), url(w["kb"], "   ")):
        response = alice_client.get(address)
        assert response.status_code == 200
        page = response.content.decode()
        assert 'name="q"' in page and "exact phrase" in page
        assert "passage" not in results(page).lower()
        assert "No passage" not in page


def test_nothing_found_says_so(alice: User, alice_client: Client) -> None:
    w = handbook(alice)
    for query in ("zeppelin", "the and of", "!!!", '"unclosed phrase', "-"):
        response = alice_client.get(url(w["kb"], query))
        assert response.status_code == 200, query
        assert "No passage of Handbook matches" in response.content.decode()
    with switch(alice):
        empty = KnowledgeBase.objects.create(name="Empty")
    page = alice_client.get(url(empty, "deploys")).content.decode()
    assert "This knowledge base has no documents yet." in page


def test_a_very_long_search_is_refused_with_a_reason(alice: User, alice_client: Client) -> None:
    w = handbook(alice)
    response = alice_client.get(url(w["kb"], "deploys " * 200))
    assert response.status_code == 400
    page = response.content.decode()
    assert f"Ensure this value has at most {MAX_QUERY_LENGTH} characters" in page
    assert "best first" not in page
    # At the limit it is searched.
    at_limit = ("deploys " * 200)[:MAX_QUERY_LENGTH]
    assert alice_client.get(url(w["kb"], at_limit)).status_code == 200
    # A NUL is refused with its reason; other control characters are only ignored.
    nul = alice_client.get(url(w["kb"], "deploys\x00"))
    assert nul.status_code == 400 and "Null characters are not allowed." in nul.content.decode()
    assert alice_client.get(url(w["kb"], "deploys\x01\x7f")).status_code == 200


def test_results_are_capped_and_ranked(alice: User, alice_client: Client) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Many")
        doc = Document.objects.create(
            knowledge_base=kb, title="Notes", source=Document.Source.PASTED, text="…"
        )
        replace_chunks(
            document=doc,
            chunks=[
                passage(n, "deploy " * (1 + n % 7) + f"note number {n}")
                for n in range(KB_SEARCH_RESULTS + 10)
            ],
        )
    page = alice_client.get(url(kb, "deploy")).content.decode()
    assert f"{KB_SEARCH_RESULTS} passages, best first." in page
    assert page.count('class="passage"') == KB_SEARCH_RESULTS
    # The passages with the most matches come first.
    first = re.search(r'#chunk-(\d+)"', page)
    assert first is not None and int(first.group(1)) % 7 == 6


def test_the_badge_says_which_ranking_found_each_passage(alice: User) -> None:
    """Vector hits come from knowledge.retrieval once a knowledge base has embeddings; the page
    shows whatever retrieve() says found each one."""
    w = handbook(alice)

    def hit(ordinal: int, found_by: tuple[str, ...]) -> ChunkHit:
        return ChunkHit(
            chunk_id=ordinal,
            ordinal=ordinal,
            document_id=w["doc"].pk,
            document_title="Operations guide",
            knowledge_base_id=w["kb"].pk,
            heading_path=(),
            page=None,
            text="x",
            headline=(HeadlineSegment("x", False),),
            rank=1.0,
            found_by=found_by,
        )

    request = RequestFactory().get("/")
    request.user = alice
    with switch(alice):
        page = render_to_string(
            "knowledge/kb_search.html",
            {
                "kb": w["kb"],
                "form": None,
                "query": "x",
                "mode": retrieval_mode(w["kb"]),
                "results": [
                    (hit(0, ("text", "vector")), "/k/1/0", "both", (False, False)),
                    (hit(1, ("vector",)), "/k/1/1", "vector", (False, False)),
                    (hit(2, ("text",)), "/k/1/2", "text", (False, False)),
                ],
            },
            request=request,
        )
    badges = re.findall(r'<span class="visually-hidden">Found by </span>([^<]+)</span>', page)
    assert badges == ["full text + vector", "vector", "full text"]
    assert 'title="Found by both full-text and vector search"' in page


# --- another account ---------------------------------------------------------------------------


def test_another_account_gets_404_and_identical_names_never_mix(
    alice: User, bob: User, alice_client: Client, bob_client: Client
) -> None:
    a = handbook(alice, own=" Alice keeps it in alicevault.")
    # Bob has no knowledge base yet: Alice's id is not found.
    assert bob_client.get(url(a["kb"], "deploys")).status_code == 404
    assert bob_client.get(url(a["kb"])).status_code == 404
    assert Client().get(url(a["kb"], "deploys")).status_code == 302  # to sign in
    # The same name, the same ids, in Bob's schema: his page shows only his passages.
    b = handbook(bob, own=" Bob keeps it in bobvault.")
    assert b["kb"].pk == a["kb"].pk
    for client, own, other in (
        (alice_client, "alicevault", "bobvault"),
        (bob_client, "bobvault", "alicevault"),
    ):
        # The page repeats the query: only what it found is looked at.
        for query in ("alicevault OR bobvault", "rollback script", "keeps", "alice OR bob"):
            found = results(client.get(url(a["kb"], query)).content.decode())
            assert 'class="passage"' in found and other not in found, query
        assert 'class="passage"' not in results(client.get(url(a["kb"], other)).content.decode())
        assert f"<mark>{own}</mark>" in client.get(url(a["kb"], own)).content.decode()


def test_a_highlight_from_the_middle_of_a_passage_says_so(
    alice: User, alice_client: Client
) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Long")
        doc = Document.objects.create(
            knowledge_base=kb, title="Story", source=Document.Source.PASTED, text="…"
        )
        long = "quiet morning words " * 30 + "then the zeppelin lands " + "calm evening " * 30
        replace_chunks(document=doc, chunks=[passage(0, long), passage(1, "A zeppelin.")])
    page = alice_client.get(url(kb, "zeppelin")).content.decode()
    shown = re.findall(r'<p class="passage-text">(.*?)</p>', page)
    assert len(shown) == 2
    middle = next(s for s in shown if "lands" in s)
    assert middle.startswith("… ") and middle.endswith(" …")
    assert "<mark>zeppelin</mark>" in middle
    # A short passage: ts_headline's fragments leave out its stop words, and the page says so.
    short = next(s for s in shown if s is not middle)
    assert "<mark>zeppelin</mark>" in short
