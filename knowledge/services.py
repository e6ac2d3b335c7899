from django.db import transaction

from knowledge.models import Document, KnowledgeBase


@transaction.atomic
def save_knowledge_base(*, knowledge_base: KnowledgeBase) -> KnowledgeBase:
    knowledge_base.full_clean()
    knowledge_base.save()
    return knowledge_base


@transaction.atomic
def delete_knowledge_base(*, knowledge_base: KnowledgeBase) -> None:
    knowledge_base.delete()


@transaction.atomic
def add_document(
    *, knowledge_base: KnowledgeBase, title: str, text: str, filename: str = ""
) -> Document:
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
