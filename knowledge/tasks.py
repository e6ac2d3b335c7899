"""Celery tasks of the knowledge app: thin, each loads by id and calls one service."""

from tenancy.tasks import account_task


@account_task(name="knowledge.index_document", ignore_result=True)
def index_document(document_id: int) -> None:
    """Extract, chunk and index one document, in its account's schema (the task carries it)."""
    from knowledge.services import index_document_now

    index_document_now(document_id=document_id)
