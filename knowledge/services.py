from django.db import transaction
from django.db.models import Func, IntegerField, Sum

from core.limits import check_limit, lock_account
from knowledge.models import Document, KnowledgeBase


@transaction.atomic
def save_knowledge_base(*, knowledge_base: KnowledgeBase) -> KnowledgeBase:
    if knowledge_base.pk is None:
        lock_account()
        check_limit(
            used=KnowledgeBase.objects.count(),
            setting="LIMIT_KNOWLEDGE_BASES_PER_ACCOUNT",
            what="knowledge bases",
        )
    knowledge_base.full_clean()
    knowledge_base.save()
    return knowledge_base


@transaction.atomic
def delete_knowledge_base(*, knowledge_base: KnowledgeBase) -> None:
    knowledge_base.delete()


def documents_total_bytes() -> int:
    """The UTF-8 size of every document's text in the active account. PostgreSQL's
    octet_length reads a stored text's size from its header, without decompressing it."""
    total = Document.objects.aggregate(
        total=Sum(Func("text", function="octet_length", output_field=IntegerField()))
    )["total"]
    return int(total or 0)


@transaction.atomic
def add_document(
    *, knowledge_base: KnowledgeBase, title: str, text: str, filename: str = ""
) -> Document:
    size = len(text.encode())
    check_limit(used=0, adding=size, setting="LIMIT_DOCUMENT_BYTES", what="bytes per document")
    lock_account()
    check_limit(
        used=Document.objects.count(), setting="LIMIT_DOCUMENTS_PER_ACCOUNT", what="documents"
    )
    check_limit(
        used=documents_total_bytes(),
        adding=size,
        setting="LIMIT_DOCUMENTS_TOTAL_BYTES",
        what="bytes of documents in all",
    )
    document = Document(
        knowledge_base=knowledge_base,
        title=title.strip(),
        text=text,
        filename=filename,
        source=Document.Source.UPLOAD if filename else Document.Source.PASTED,
    )
    document.full_clean()
    document.save()
    return document


@transaction.atomic
def delete_document(*, document: Document) -> None:
    document.delete()
