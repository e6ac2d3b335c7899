"""Documents of a knowledge base (issue 9, items 1, 2 and 6): pasted, uploaded (.txt, .md, .html,
.pdf) or imported from a URL; kept as they came and indexed by a worker, step by step, with the
state shown live on the knowledge base page; failures with reasons; re-index; the limits."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from accounts.models import User
from knowledge import services
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.selectors import search_chunks
from llms.models import LLM
from tenancy import switch
from tests.helpers import make_provider
from tests.sites import SiteHandler, base_url, serve
from tests.test_knowledge_extraction import encrypted, make_pdf
from tests.workers import threads_worker

# Two pages, each long enough for passages of its own (they carry their page number).
PDF = make_pdf(
    [
        ["Herons stand still in shallow water."]
        + [f"Line {n} of the heron notes, about their patience." for n in range(45)],
        ["Kingfishers dive from a perch."]
        + [f"Line {n} of the kingfisher notes, about their speed." for n in range(45)],
    ],
    title="Water birds",
)
HTML_PAGE = (
    b"<html><head><title>Tide tables</title></head><body><nav>Home | Shop</nav>"
    b"<main><h1>Tides</h1><h2>Spring tides</h2>"
    b"<p>Spring tides follow the full moon and the new moon.</p></main></body></html>"
)
FINAL = (Document.Status.INDEXED, Document.Status.FAILED)


class Handler(SiteHandler):
    """What the imports read: a page, a PDF, text, and the ways a fetch goes wrong."""

    def do_GET(self) -> None:
        try:
            if self.path == "/tides.html":
                self._send(200, "text/html; charset=utf-8", HTML_PAGE)
            elif self.path == "/birds.pdf":
                self._send(200, "application/pdf", PDF)
            elif self.path == "/notes":
                self._send(200, "text/plain", b"Owls hunt at night over the meadows.\n")
            elif self.path == "/moved":
                self._send(302, "text/plain", b"", Location="/tides.html")
            elif self.path == "/to-private":
                self._send(302, "text/plain", b"", Location="http://10.0.0.1/secret")
            elif self.path == "/image":
                self._send(200, "image/png", b"\x89PNG\r\n")
            elif self.path == "/big":
                self._send(200, "text/plain", b"word " * 2000)
            elif self.path == "/slow":
                time.sleep(2)
                self._send(200, "text/plain", b"late")
            else:
                self._send(404, "text/html", b"<p>gone</p>")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def web() -> Iterator[str]:
    with serve(Handler) as server:
        yield base_url(server)


@pytest.fixture
def kb(alice: User) -> KnowledgeBase:
    with switch(alice):
        return KnowledgeBase.objects.create(name="Field notes")


def upload(name: str, data: bytes, content_type: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def add(client: Client, kb: KnowledgeBase, **fields: Any) -> Any:
    return client.post(reverse("knowledge:document_create", args=[kb.pk]), {"title": "", **fields})


def index(user: User, document_id: int) -> Document:
    with switch(user):
        document = services.index_document_now(document_id=document_id)
        assert document is not None
        return document


def original(document: Document) -> bytes:
    assert document.original is not None
    return bytes(document.original)


def newest(user: User) -> Document:
    with switch(user):
        return Document.objects.order_by("-pk").first()  # type: ignore[return-value]


# --- every format, through the form and a real worker ----------------------------------------


def test_every_format_through_the_form_and_a_worker(
    clean_schemas: None, alice: User, alice_client: Client, web: str
) -> None:
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Field notes")
    sent: list[dict[str, Any]] = [
        {"file": upload("swans.txt", b"Swans mate for life.\n", "text/plain")},
        {"file": upload("geese.md", b"# Geese\n\n## Flight\n\nGeese fly in a V.\n", "")},
        {"file": upload("tides.html", HTML_PAGE, "text/html")},
        {"file": upload("birds.pdf", PDF, "application/pdf")},
        {"url": f"{web}/moved"},  # redirected to the HTML page
        {"url": f"{web}/birds.pdf", "title": "Birds, imported"},
        {"url": f"{web}/notes"},
        {"title": "Pasted", "text": "Crows remember faces."},
    ]
    with threads_worker(2, queues=("celery",)):
        for fields in sent:
            response = add(alice_client, kb, **fields)
            assert response.status_code == 302, response.content.decode()[:2000]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with switch(alice):
                states = list(Document.objects.values_list("status", flat=True))
            if all(state in FINAL for state in states):
                break
            time.sleep(0.05)
    with switch(alice):
        documents = {d.title: d for d in Document.objects.all()}
        for document in documents.values():
            assert document.status == Document.Status.INDEXED, (document.title, document.error)
            assert document.chunk_count == document.chunks.count() > 0
        assert sorted(documents) == sorted(
            [
                "Birds, imported",
                "Pasted",
                "Tide tables",  # the page's <title>, as no title was given
                "birds",  # an upload's title is its file's name unless one is given
                "geese",
                "swans",
                "tides",
                f"{web}/notes",  # text has no title: the address stays
            ]
        )
        pdf = documents["birds"]
        assert original(pdf) == PDF and pdf.content_type == "application/pdf"
        assert pdf.source == Document.Source.UPLOAD and pdf.filename == "birds.pdf"
        # The text is what was extracted, not the file's bytes.
        assert "Kingfishers dive from a perch." in pdf.text and "%PDF" not in pdf.text
        pages = dict(pdf.chunks.values_list("ordinal", "page"))
        assert set(pages.values()) == {1, 2} and pages[0] == 1
        assert documents["tides"].text == documents["Tide tables"].text
        imported = documents["Tide tables"]
        assert imported.source == Document.Source.URL
        assert imported.url == f"{web}/tides.html"  # after the redirect
        assert imported.content_type.startswith("text/html")
        assert original(imported) == HTML_PAGE
        assert "Spring tides follow the full moon" in imported.text
        assert "Shop" not in imported.text
        assert documents["Pasted"].original is None
        assert documents["Pasted"].text == "Crows remember faces."
        hits = search_chunks(query="kingfisher speed", knowledge_bases=[kb])
        assert {hit.document_id for hit in hits} == {pdf.pk, documents["Birds, imported"].pk}
        assert 2 in {hit.page for hit in hits}
        (hit,) = search_chunks(query="spring tides moon", knowledge_bases=[kb], limit=1)
        assert hit.heading_path == ("Tides", "Spring tides")
    page = alice_client.get(reverse("knowledge:kb_detail", args=[kb.pk])).content.decode()
    assert page.count("Ready</span>") == len(sent)
    # All done: the list no longer asks for itself.
    assert "hx-get" not in page.split('id="documents"', 1)[1].split(">", 1)[0]


# --- failures, with reasons --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing", "/missing answered 404 Not Found."),
        (
            "/image",
            "/image is image/png; only web pages (HTML), PDF and plain text can be imported.",
        ),
        ("/big", "The page is larger than the limit of 1,000 bytes per document"),
        ("/slow", "The page did not arrive within the time limit (0.5 s)."),
        (
            "/to-private",
            "Cannot fetch http://10.0.0.1/secret: refused: 10.0.0.1 is a private address.",
        ),
    ],
)
def test_a_url_import_that_cannot_be_read_fails_with_a_reason(
    alice: User,
    alice_client: Client,
    kb: KnowledgeBase,
    web: str,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    reason: str,
) -> None:
    settings.LIMIT_DOCUMENT_BYTES = 1000
    monkeypatch.setattr(services, "FETCH_TIMEOUT_SECONDS", 0.5)
    assert add(alice_client, kb, url=f"{web}{path}").status_code == 302
    document = newest(alice)
    assert document.status == Document.Status.QUEUED
    assert document.title == f"{web}{path}"
    failed = index(alice, document.pk)
    assert failed.status == Document.Status.FAILED
    assert reason in failed.error
    assert failed.original is None and failed.chunk_count == 0
    page = alice_client.get(reverse("knowledge:kb_detail", args=[kb.pk])).content.decode()
    assert reason.replace("&", "&amp;") in page or reason in page


def test_a_loopback_address_is_refused_by_the_default_policy(
    alice: User, alice_client: Client, kb: KnowledgeBase, web: str, settings: Any
) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    assert add(alice_client, kb, url=f"{web}/notes").status_code == 302
    failed = index(alice, newest(alice).pk)
    assert failed.status == Document.Status.FAILED
    assert failed.error == f"Cannot fetch {web}/notes: refused: 127.0.0.1 is a loopback address."


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (
            "locked.pdf",
            encrypted(PDF, user_password="s3cret", owner_password="owner"),
            "The PDF is encrypted; upload an unprotected copy.",
        ),
        ("scan.pdf", make_pdf([None]), "no text"),
        ("empty.html", b"<html><body><script>x()</script></body></html>", "no readable text"),
        ("latin.txt", "caf\xe9 cr\xe8me".encode("latin-1"), ""),  # read, not refused
    ],
)
def test_an_upload_that_cannot_be_read_fails_with_a_reason(
    alice: User, alice_client: Client, kb: KnowledgeBase, name: str, data: bytes, reason: str
) -> None:
    assert add(alice_client, kb, file=upload(name, data, "")).status_code == 302
    document = index(alice, newest(alice).pk)
    if not reason:
        assert document.status == Document.Status.INDEXED and "café crème" in document.text
        return
    assert document.status == Document.Status.FAILED
    assert reason in document.error
    detail = alice_client.get(reverse("knowledge:document_detail", args=[document.pk]))
    assert "Indexing failed:" in detail.content.decode()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, "Paste some text, upload a file or give a web address."),
        (
            {"text": "words", "url": "https://example.org/"},
            "Paste text, upload a file or give an address: one of them, not several.",
        ),
        (
            {"file": ("notes.txt", b"words", "text/plain"), "url": "https://example.org/"},
            "one of them, not several",
        ),
        ({"file": ("sheet.xlsx", b"PK\x03\x04", "application/zip")}, "Upload a .txt, .md"),
        ({"file": ("blank.txt", b"  \n", "text/plain")}, "That file is empty."),
        ({"url": "ftp://example.org/file.txt"}, "Only http:// and https:// addresses"),
        ({"url": "not a url at all"}, "Enter a valid URL."),
        ({"text": "words"}, "Give the pasted text a title."),
    ],
)
def test_the_form_says_what_is_wrong(
    alice: User, alice_client: Client, kb: KnowledgeBase, fields: dict[str, Any], error: str
) -> None:
    if "file" in fields:
        fields = {**fields, "file": upload(*fields["file"])}
    response = add(alice_client, kb, **fields)
    assert response.status_code == 400
    assert error in response.content.decode().replace("&#x27;", "'")
    with switch(alice):
        assert not Document.objects.exists()


# --- limits ------------------------------------------------------------------------------------


def test_the_chunk_limit_fails_a_long_document(
    alice: User, alice_client: Client, kb: KnowledgeBase, settings: Any
) -> None:
    settings.LIMIT_CHUNKS_PER_DOCUMENT = 3
    text = "\n\n".join(
        f"Paragraph {n}. " + "Sandpipers run along the shore. " * 40 for n in range(8)
    )
    assert add(alice_client, kb, title="Long", text=text).status_code == 302
    document = index(alice, newest(alice).pk)
    assert document.status == Document.Status.FAILED
    assert "more than the limit of 3 per document (LIMIT_CHUNKS_PER_DOCUMENT)" in document.error
    with switch(alice):
        assert not Chunk.objects.exists()
    settings.LIMIT_CHUNKS_PER_DOCUMENT = 5000
    with switch(alice):
        services.reindex_document(document=document)
    assert index(alice, document.pk).status == Document.Status.INDEXED


def test_total_bytes_count_the_files_kept(
    alice: User, alice_client: Client, kb: KnowledgeBase, web: str, settings: Any
) -> None:
    settings.LIMIT_DOCUMENTS_TOTAL_BYTES = len(PDF) + 100
    assert (
        add(alice_client, kb, file=upload("birds.pdf", PDF, "application/pdf")).status_code == 302
    )
    with switch(alice):
        assert services.documents_total_bytes() == len(PDF)
    document = index(alice, newest(alice).pk)
    with switch(alice):
        # The file and the text read from it both count.
        used = services.documents_total_bytes()
        assert used == len(PDF) + len(document.text.encode())
    settings.LIMIT_DOCUMENTS_TOTAL_BYTES = used + 10
    response = add(alice_client, kb, file=upload("again.pdf", PDF, "application/pdf"))
    assert response.status_code == 400
    assert "LIMIT_DOCUMENTS_TOTAL_BYTES" in response.content.decode()
    # An import's size is known once fetched: over the total, it fails and says so.
    assert add(alice_client, kb, url=f"{web}/birds.pdf").status_code == 302
    failed = index(alice, newest(alice).pk)
    assert failed.status == Document.Status.FAILED
    assert "LIMIT_DOCUMENTS_TOTAL_BYTES" in failed.error and failed.original is None


# --- re-index, language, live states ------------------------------------------------------------


def test_reindex_replaces_the_chunks_and_reindex_all(
    alice: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    assert (
        add(
            alice_client, kb, file=upload("egrets.md", b"# Egrets\n\nEgrets wade.\n", "")
        ).status_code
        == 302
    )
    document = index(alice, newest(alice).pk)
    with switch(alice):
        old_ids = set(Chunk.objects.values_list("pk", flat=True))
        # The kept file changed (as an import fetched again would): re-index reads it again.
        Document.objects.filter(pk=document.pk).update(
            original=b"# Egrets\n\nEgrets nest in colonies.\n"
        )
    url = reverse("knowledge:document_reindex", args=[document.pk])
    assert alice_client.get(url).status_code == 405  # GET changes nothing
    assert alice_client.post(url).status_code == 302
    with switch(alice):
        document.refresh_from_db()
        assert document.status == Document.Status.QUEUED
        # Still searchable while it waits.
        assert search_chunks(query="wade")
    index(alice, document.pk)
    with switch(alice):
        assert not old_ids & set(Chunk.objects.values_list("pk", flat=True))
        assert search_chunks(query="wade") == []
        assert search_chunks(query="colonies")
        legacy = Document.objects.create(
            knowledge_base=kb, title="Old", text="Storks migrate.", status=Document.Status.STORED
        )
    page = alice_client.get(reverse("knowledge:kb_detail", args=[kb.pk])).content.decode()
    assert "Stored, not indexed" in page
    assert reverse("knowledge:document_reindex", args=[legacy.pk]) in page
    response = alice_client.post(reverse("knowledge:kb_reindex", args=[kb.pk]), follow=True)
    assert "Indexing 2 documents again." in response.content.decode()
    with switch(alice):
        assert set(Document.objects.values_list("status", flat=True)) == {Document.Status.QUEUED}
    assert index(alice, legacy.pk).status == Document.Status.INDEXED


def test_changing_the_language_queues_the_documents_again(
    alice: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    assert add(alice_client, kb, title="Rules", text="Die Vögel singen.").status_code == 302
    index(alice, newest(alice).pk)
    edit = reverse("knowledge:kb_edit", args=[kb.pk])
    # A new name only: nothing to index again.
    assert alice_client.post(edit, {"name": "Notes", "language": "english"}).status_code == 302
    assert newest(alice).status == Document.Status.INDEXED
    response = alice_client.post(edit, {"name": "Notes", "language": "german"}, follow=True)
    assert "Its documents are being indexed again." in response.content.decode()
    document = newest(alice)
    assert document.status == Document.Status.QUEUED
    with switch(alice):
        kb.refresh_from_db()
        assert search_chunks(query="Vogel", knowledge_bases=[kb]) == []  # indexed in English
    index(alice, document.pk)
    with switch(alice):
        # German stemming: "Vogel" finds "Vögel" only with the new configuration.
        assert search_chunks(query="Vogel", knowledge_bases=[kb])


def test_the_document_list_updates_itself_while_something_is_in_progress(
    alice: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    assert add(alice_client, kb, title="Rules", text="# Rules\n\nBe kind.").status_code == 302
    fragment_url = reverse("knowledge:kb_documents", args=[kb.pk])
    page = alice_client.get(reverse("knowledge:kb_detail", args=[kb.pk])).content.decode()
    assert f'hx-get="{fragment_url}" hx-trigger="every 2s"' in page
    assert "Queued for indexing…" in page
    document = newest(alice)
    with switch(alice):
        Document.objects.filter(pk=document.pk).update(
            status=Document.Status.INDEXING, progress_total=7
        )
        services.report_progress(document_id=document.pk, done=3)
    fragment = alice_client.get(fragment_url, HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith("{#") is False and 'id="documents"' in fragment
    assert "Indexing 3/7" in fragment and "<html" not in fragment
    assert f'hx-get="{fragment_url}"' in fragment
    index(alice, document.pk)
    fragment = alice_client.get(fragment_url).content.decode()
    assert "Ready</span>" in fragment and "1 passage" in fragment
    assert "hx-get" not in fragment  # every document is done: it stops asking


def test_the_page_says_how_it_searches(
    alice: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    page = alice_client.get(reverse("knowledge:kb_detail", args=[kb.pk])).content.decode()
    assert "Full-text search only: this knowledge base has no embedding model." in page
    # The search box goes to the knowledge base's search page, below this one.
    assert f'action="{reverse("knowledge:kb_detail", args=[kb.pk])}search/"' in page
    assert 'name="q"' in page


def test_the_document_page_shows_passages_with_anchors(
    alice: User, alice_client: Client, kb: KnowledgeBase, web: str
) -> None:
    assert add(alice_client, kb, url=f"{web}/birds.pdf").status_code == 302
    document = index(alice, newest(alice).pk)
    assert document.title == "Water birds"  # the PDF's own title
    page = alice_client.get(
        reverse("knowledge:document_detail", args=[document.pk])
    ).content.decode()
    assert f'<a href="{web}/birds.pdf" rel="noopener nofollow noreferrer"' in page
    assert 'id="chunk-0"' in page and "page 1" in page
    assert "Herons stand still in shallow water." in page
    assert "Re-index" in page


def test_a_long_document_shows_its_passages_a_page_at_a_time(
    alice: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    text = "\n\n".join(
        f"# Part {n}\n\n" + f"Section {n} is about plovers number {n}. " * 60 for n in range(120)
    )
    assert add(alice_client, kb, title="Plovers", text=text).status_code == 302
    document = index(alice, newest(alice).pk)
    assert document.chunk_count > 100
    url = reverse("knowledge:document_detail", args=[document.pk])
    first = alice_client.get(url).content.decode()
    assert 'id="chunk-0"' in first and 'id="chunk-99"' in first and 'id="chunk-100"' not in first
    assert "?page=2" in first
    # A citation of passage 105 opens the page that holds it.
    cited = alice_client.get(url, {"passage": "105"}).content.decode()
    assert 'id="chunk-105"' in cited and 'id="chunk-0"' not in cited
    assert alice_client.get(url, {"page": "999"}).status_code == 200
    assert alice_client.get(url, {"page": "x", "passage": "-1"}).status_code == 200


# --- the knowledge base form: language and embedding model --------------------------------------


def test_embedding_provider_and_model_go_together(
    alice: User, bob: User, alice_client: Client, kb: KnowledgeBase
) -> None:
    mine = make_provider(alice)
    theirs = make_provider(bob)
    anthropic = make_provider(
        alice,
        llm=LLM.objects.get(name="Anthropic"),
        enabled_models=["claude"],
        default_model="claude",
    )
    edit = reverse("knowledge:kb_edit", args=[kb.pk])
    form = alice_client.get(edit).content.decode()
    assert str(mine.pk) in form
    assert str(theirs.pk) not in form and str(anthropic.pk) not in form
    base = {"name": "Field notes", "language": "english"}
    response = alice_client.post(edit, {**base, "embedding_llm": mine.pk})
    assert "Name the embedding model the provider serves." in response.content.decode()
    response = alice_client.post(edit, {**base, "embedding_model": "nomic-embed-text"})
    assert "Choose the provider that serves this model." in response.content.decode()
    for other in (theirs, anthropic):
        response = alice_client.post(
            edit, {**base, "embedding_llm": other.pk, "embedding_model": "m"}
        )
        assert response.status_code == 400, other
    response = alice_client.post(
        edit, {**base, "embedding_llm": mine.pk, "embedding_model": " nomic-embed-text "}
    )
    assert response.status_code == 302
    with switch(alice):
        kb.refresh_from_db()
    assert kb.embedding_llm_id == mine.pk and kb.embedding_model == "nomic-embed-text"


# --- another account -----------------------------------------------------------------------------


def test_another_account_gets_404_on_the_new_urls(
    alice: User, bob_client: Client, alice_client: Client, kb: KnowledgeBase
) -> None:
    assert add(alice_client, kb, title="Rules", text="Be kind.").status_code == 302
    document = index(alice, newest(alice).pk)
    urls = [
        reverse("knowledge:kb_documents", args=[kb.pk]),
        reverse("knowledge:kb_reindex", args=[kb.pk]),
        reverse("knowledge:document_reindex", args=[document.pk]),
    ]
    for url in urls:
        assert bob_client.get(url).status_code == 404, url
        assert bob_client.post(url).status_code == 404, url
    assert newest(alice).status == Document.Status.INDEXED
