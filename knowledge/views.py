from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from core.uploads import upload_refusal
from core.views import back_url, confirm_delete, form_page
from knowledge import services
from knowledge.forms import DocumentForm, KnowledgeBaseForm
from knowledge.models import Document, KnowledgeBase
from knowledge.types import ChunkHit


@login_required
def kb_list(request: HttpRequest) -> HttpResponse:
    kbs = KnowledgeBase.objects.annotate(document_count=Count("documents"))
    return render(request, "knowledge/kb_list.html", {"knowledge_bases": kbs})


@login_required
def kb_detail(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    documents = kb.documents.defer("text")
    return render(request, "knowledge/kb_detail.html", {"kb": kb, "documents": documents})


@login_required
def kb_create(request: HttpRequest) -> HttpResponse:
    return _kb_form(request, KnowledgeBase(), title="New knowledge base", submit="Create")


@login_required
def kb_edit(request: HttpRequest, pk: int) -> HttpResponse:
    kb = get_object_or_404(KnowledgeBase, pk=pk)
    return _kb_form(request, kb, title=f"Edit {kb}", submit="Save")


def _kb_form(request: HttpRequest, kb: KnowledgeBase, *, title: str, submit: str) -> HttpResponse:
    form = KnowledgeBaseForm(request.POST or None, instance=kb)

    def save() -> HttpResponse:
        saved = services.save_knowledge_base(knowledge_base=form.instance)
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
        document = services.add_document(
            knowledge_base=kb,
            title=form.cleaned_data["title"],
            text=form.cleaned_data["text"],
            filename=form.cleaned_data["filename"],
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
    document = get_object_or_404(Document.objects.select_related("knowledge_base"), pk=pk)
    return render(request, "knowledge/document_detail.html", {"document": document})


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
        consequences=[f"its {len(document.text):,} characters of text"],
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
    from knowledge.retrieval import retrieval_mode, retrieve
    from knowledge.search_forms import PassageSearchForm

    kb = get_object_or_404(KnowledgeBase, pk=pk)
    form = PassageSearchForm(request.GET or None)
    results = None
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400
    elif form.is_bound and form.cleaned_data["q"]:
        hits = retrieve(query=form.cleaned_data["q"], knowledge_bases=[kb], limit=KB_SEARCH_RESULTS)
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
