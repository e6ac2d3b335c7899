"""Links to passages: what agents cite in IRC, and where those links lead.

A citation is a short link, PUBLIC_URL/k/<document id>/<ordinal>, not the document page's
address with its anchor (/knowledge/documents/<id>/#chunk-<ordinal>): an IRC line holds about
400 bytes and an answer may cite two or three passages, so the link costs half the characters.
It names the document and the passage's place in it, not the chunk's row: re-indexing a
document replaces its chunk rows (new ids) but a passage keeps its ordinal, so a link said in
a channel last month still opens the document. It leads to the document page of the signed-in
person's own account (knowledge.views.passage_link), like every other page.
"""

from django.conf import settings
from django.urls import reverse

from knowledge.types import ChunkHit


def passage_path(*, document_id: int, ordinal: int) -> str:
    """The short path of a passage (/k/<document>/<ordinal>)."""
    return reverse("passage_link", args=[document_id, ordinal])


def citation_url(hit: ChunkHit) -> str:
    """The absolute short link an agent cites for a passage."""
    return settings.PUBLIC_URL + passage_path(document_id=hit.document_id, ordinal=hit.ordinal)


def document_passage_path(*, document_id: int, ordinal: int) -> str:
    """The passage on its document's page: where the short link redirects."""
    return reverse("knowledge:document_detail", args=[document_id]) + f"#chunk-{ordinal}"
