from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse

from accounts.models import User
from core.uploads import upload_refusal
from core.views import back_url, confirm_delete, form_page
from knowledge import services
from knowledge.forms import DocumentForm, KnowledgeBaseForm
from knowledge.models import Document, KnowledgeBase
from knowledge.retrieval import retrieval_mode
from knowledge.types import ChunkHit


@login_required
def kb_list(request: HttpRequest) -> HttpResponse:
    kbs = KnowledgeBase.objects.annotate(document_count=Count("documents"))
    return render(request, "knowledge/kb_list.html", {"knowledge_bases": kbs})


# How often the knowledge base page asks for its documents while one is being indexed.
DOCUMENTS_POLL_SECONDS = 2
# Passages on one page of a document; a citation's ?passage=n opens the page holding passage n.
PASSAGES_PER_PAGE = 100
IN_PROGRESS = frozenset(
    {
        Document.Status.QUEUED,
        Document.Status.FETCHING,
        Document.Status.EXTRACTING,
        Document.Status.INDEXING,
    }
)


def _documents_context(kb: KnowledgeBase) -> dict[str, Any]:
    documents = list(kb.documents.defer("text", "original"))
    return {
        "kb": kb,
        "documents": documents,
        "in_progress": any(d.status in IN_PROGRESS for d in documents),
        "poll_seconds": DOCUMENTS_POLL_SECONDS,
    }


@login_required
def kb_detail(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    context = _documents_context(kb) | {"retrieval": retrieval_mode(kb)}
    return render(request, "knowledge/kb_detail.html", context)


@login_required
def kb_documents(request: HttpRequest, pk: int) -> HttpResponse:
    """The knowledge base page's list of documents alone: htmx swaps it in every few seconds
    while a document is on its way, and the list stops asking once every one is done."""
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    return render(request, "knowledge/_documents.html", _documents_context(kb))


@login_required
def kb_reindex(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    count = services.reindex_knowledge_base(knowledge_base=kb)
    messages.success(request, f"Indexing {count} document{pluralize(count)} again.")
    return redirect("knowledge:kb_detail", pk=kb.pk)


@login_required
def kb_create(request: HttpRequest) -> HttpResponse:
    return _kb_form(request, KnowledgeBase(), title="New knowledge base", submit="Create")


@login_required
def kb_edit(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    return _kb_form(request, kb, title=f"Edit {kb}", submit="Save")


def _kb_form(request: HttpRequest, kb: KnowledgeBase, *, title: str, submit: str) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    form = KnowledgeBaseForm(request.POST or None, instance=kb, account=user.account)

    def save() -> HttpResponse:
        existing = form.instance.pk is not None
        saved = services.save_knowledge_base(knowledge_base=form.instance)
        if existing and set(form.changed_data) & {"language", "embedding_llm", "embedding_model"}:
            messages.success(request, "Saved. Its documents are being indexed again.")
        return redirect("knowledge:kb_detail", pk=saved.pk)

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=back_url(kb, "knowledge:kb_detail", "knowledge:kb_list"),
    )


@login_required
def kb_delete(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    return confirm_delete(
        request,
        obj=kb,
        delete=lambda: services.delete_knowledge_base(knowledge_base=kb),
        cancel_url=reverse("knowledge:kb_detail", args=[kb.pk]),
        success_url=reverse("knowledge:kb_list"),
        consequences=[f"{kb.documents.count()} documents", "agents stop using it"],
    )


@login_required
def document_create(request: HttpRequest, kb_pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=kb_pk)
    if request.method == "POST":
        # Reading the body first: a stopped upload has left its reason on the request by then.
        data, files = request.POST, request.FILES
        form = DocumentForm(data, files, upload_refusal=upload_refusal(request))
    else:
        form = DocumentForm()

    def save() -> HttpResponse:
        data = form.cleaned_data
        document = services.add_document(
            knowledge_base=kb,
            title=data["title"],
            text=data["text"],
            filename=data["filename"],
            data=data["data"],
            content_type=data["content_type"],
            url=data["url"],
        )
        messages.success(request, f"Added “{document.title}”.")
        return redirect("knowledge:kb_detail", pk=kb.pk)

    return form_page(
        request,
        form,
        on_valid=save,
        title=f"Add a document to {kb}",
        submit_label="Add document",
        cancel_url=reverse("knowledge:kb_detail", args=[kb.pk]),
        multipart=True,
    )


@login_required
def document_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A document: its state, where it came from, and its passages, each with the anchor
    citations link to (#chunk-<ordinal>), a page of them at a time."""
    document = get_object_or_404(
        Document.objects.select_related("knowledge_base").defer("original"), pk=pk
    )
    chunks = document.chunks.defer("search_vector", "embedding").order_by("ordinal")
    paginator = Paginator(chunks, PASSAGES_PER_PAGE)
    number: int | str = request.GET.get("page") or 1
    passage = request.GET.get("passage", "")
    if passage.isdigit():
        number = int(passage) // PASSAGES_PER_PAGE + 1
    page = paginator.get_page(number)
    return render(
        request,
        "knowledge/document_detail.html",
        {"document": document, "passages": page},
    )


@login_required
def document_reindex(request: HttpRequest, pk: int) -> HttpResponse:
    document = get_object_or_404(Document, pk=pk)
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    services.reindex_document(document=document)
    messages.success(request, f"Indexing “{document.title}” again.")
    return redirect("knowledge:document_detail", pk=document.pk)


@login_required
def document_delete(request: HttpRequest, pk: int) -> HttpResponse:
    document = get_object_or_404(Document.objects.select_related("knowledge_base"), pk=pk)
    back = reverse("knowledge:kb_detail", args=[document.knowledge_base_id])
    return confirm_delete(
        request,
        obj=document,
        delete=lambda: services.delete_document(document=document),
        cancel_url=reverse("knowledge:document_detail", args=[document.pk]),
        success_url=back,
        consequences=[
            *([f"its file ({len(document.original):,} bytes)"] if document.original else []),
            f"its {len(document.text):,} characters of text",
            f"its {document.chunk_count:,} passages",
        ],
    )


# The passages a search shows: more than an agent reads (knowledge_search returns 5 by default),
# so a person sees what ranked just below.
KB_SEARCH_RESULTS = 20


@login_required
def kb_search(request: HttpRequest, pk: int) -> HttpResponse:
    """A knowledge base's passages for a query, ranked as the agents' knowledge_search ranks
    them, with highlights and which ranking found each: how a person checks why an agent
    answered what it did."""
    from knowledge.links import passage_path
    from knowledge.retrieval import retrieval_mode, search
    from knowledge.search_forms import PassageSearchForm

    kb = get_object_or_404(KnowledgeBase, pk=pk)
    form = PassageSearchForm(request.GET or None)
    results = None
    notes: tuple[str, ...] = ()
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400
    elif form.is_bound and form.cleaned_data["q"]:
        found = search(query=form.cleaned_data["q"], knowledge_bases=[kb], limit=KB_SEARCH_RESULTS)
        hits, notes = found.hits, found.notes
        results = [
            (
                hit,
                passage_path(document_id=hit.document_id, ordinal=hit.ordinal),
                # Which rankings found it, as the page says it: "text", "vector" or "both".
                "both" if len(set(hit.found_by)) > 1 else hit.found_by[0],
                _cut(hit),
            )
            for hit in hits
        ]
    return render(
        request,
        "knowledge/kb_search.html",
        {
            "kb": kb,
            "form": form,
            "results": results,
            # Why a ranking is missing from these results (e.g. the provider did not answer).
            "notes": notes,
            "query": form.cleaned_data.get("q", "") if form.is_bound and form.is_valid() else "",
            "mode": retrieval_mode(kb),
        },
        status=status,
    )


def _cut(hit: ChunkHit) -> tuple[bool, bool]:
    """Whether the highlight leaves out the passage's start and its end (shown as "…")."""
    shown = "".join(segment.text for segment in hit.headline).strip()
    text = " ".join(hit.text.split())
    shown = " ".join(shown.split())
    if not shown:
        return False, False
    return not text.startswith(shown[:40]), not text.endswith(shown[-40:])


@login_required
def passage_link(request: HttpRequest, document_id: int, ordinal: int) -> HttpResponse:
    """A cited passage (knowledge.links): its document's page, scrolled to the passage. Only a
    document of the signed-in person's account: anyone else's is not found."""
    from knowledge.links import document_passage_path

    document = get_object_or_404(Document.objects.only("pk"), pk=document_id)
    return redirect(document_passage_path(document_id=document.pk, ordinal=ordinal))
