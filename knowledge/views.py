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
