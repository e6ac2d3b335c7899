"""The knowledge base page in a real browser (Debian's Chromium through Playwright): the list of
documents follows indexing without a reload and stops asking once every document is done;
a citation's link opens the document at its passage, even on a later page of passages."""

import re
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import Browser, expect

from knowledge.models import Document, KnowledgeBase
from knowledge.services import index_document_now
from tenancy import switch
from tests.factories import UserFactory
from tests.test_agent_pages_browser import csp_watch, sign_in
from tests.test_browser import (  # noqa: F401 (browser: a fixture)
    ARTIFACTS,
    DESKTOP,
    PHONE,
    browser,
    screenshot,
)


@pytest.mark.browser
def test_the_document_list_follows_indexing_without_a_reload(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Handbook")
        # Queued, but never handed to a worker: this test moves it along.
        document = Document.objects.create(
            knowledge_base=kb,
            title="Runbook",
            text="# Runbook\n\nDeploys happen on Fridays.",
            source=Document.Source.PASTED,
        )
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations = csp_watch(page)
    sign_in(page, live_server.url, alice)
    page.goto(live_server.url + reverse("knowledge:kb_detail", args=[kb.pk]))
    row = page.locator(f"#document-{document.pk}")
    expect(row).to_contain_text("Queued for indexing…")
    # Marks the loaded page: a reload would lose it.
    page.evaluate("window.notReloaded = true")

    with switch(alice):
        Document.objects.filter(pk=document.pk).update(
            status=Document.Status.INDEXING, progress_done=2, progress_total=5
        )
    expect(row).to_contain_text("Indexing 2/5")
    with switch(alice):
        index_document_now(document_id=document.pk)
    expect(row).to_contain_text("Ready")
    expect(row).to_contain_text("1 passage")
    expect(page.locator("#documents")).not_to_have_attribute("hx-trigger", re.compile("every"))
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "knowledge-base.png")

    page.set_viewport_size(PHONE)
    for name, url in (
        ("knowledge base", reverse("knowledge:kb_detail", args=[kb.pk])),
        ("new document", reverse("knowledge:document_create", args=[kb.pk])),
        ("knowledge base settings", reverse("knowledge:kb_edit", args=[kb.pk])),
    ):
        page.goto(live_server.url + url)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the {name} page overflows a phone: {width}px wide"
        screenshot(page, f"phone-{name.replace(' ', '-')}.png")
    assert violations == []
    context.close()


@pytest.mark.browser
def test_a_citation_opens_its_passage(
    live_server: Any,
    clean_schemas: None,
    browser: Browser,  # noqa: F811 (the fixture)
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    text = "\n\n".join(
        f"# Part {n}\n\n" + f"Section {n} is about plovers number {n}. " * 60 for n in range(120)
    )
    with switch(alice):
        kb = KnowledgeBase.objects.create(name="Handbook")
        document = Document.objects.create(
            knowledge_base=kb, title="Plovers", text=text, source=Document.Source.PASTED
        )
        indexed = index_document_now(document_id=document.pk)
        assert indexed is not None and indexed.chunk_count > 105
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    page = context.new_page()
    violations = csp_watch(page)
    sign_in(page, live_server.url, alice)
    base = live_server.url + reverse("knowledge:document_detail", args=[document.pk])

    page.goto(base + "#chunk-3")
    assert page.evaluate("document.querySelector(':target')?.id") == "chunk-3"
    background = page.locator("#chunk-3").evaluate("e => getComputedStyle(e).backgroundColor")
    plain = page.locator("#chunk-4").evaluate("e => getComputedStyle(e).backgroundColor")
    assert background != plain  # the cited passage stands out
    # The viewport only: the whole page of a hundred passages is a very tall picture.
    page.screenshot(path=str(ARTIFACTS / "document-passage.png"))

    # Passage 105 is on the second page of passages: the link still finds it.
    page.goto(base + "#chunk-105")
    expect(page).to_have_url(re.compile(r"\?passage=105#chunk-105$"))
    expect(page.locator("#chunk-105")).to_be_in_viewport()
    assert page.evaluate("document.querySelector(':target')?.id") == "chunk-105"
    # A passage that does not exist: one try, no loop.
    page.goto(base + "#chunk-99999")
    expect(page).to_have_url(re.compile(r"\?passage=99999#chunk-99999$"))
    page.wait_for_timeout(500)
    expect(page).to_have_url(re.compile(r"\?passage=99999#chunk-99999$"))
    assert violations == []
    context.close()
