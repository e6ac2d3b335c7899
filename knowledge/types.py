"""Plain values passed between the knowledge app's parts (chunking, storing, retrieval) and the
code that uses them (the agents' tool, the knowledge base page)."""

from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True)
class HeadlineSegment:
    """A run of a passage's highlight: `marked` when it is a match. Text, never HTML."""

    text: str
    marked: bool


@dataclass(frozen=True)
class ChunkHit:
    """One passage found by search_chunks, best first."""

    chunk_id: int
    ordinal: int
    document_id: int
    document_title: str
    knowledge_base_id: int
    heading_path: tuple[str, ...]
    page: int | None
    text: str
    headline: tuple[HeadlineSegment, ...]
    rank: float
    # Which rankings found it: ("text",), ("vector",) or ("text", "vector") (knowledge.retrieval).
    found_by: tuple[str, ...] = ("text",)

    @property
    def anchor(self) -> str:
        """The passage's id on its document's page (documents/<id>/#chunk-<ordinal>)."""
        return f"chunk-{self.ordinal}"

    @property
    def headline_html(self) -> SafeString:
        """The highlight as HTML: every segment escaped, the matches in <mark>."""
        return mark_safe(  # noqa: S308 - every piece of text is escaped here
            "".join(
                f"<mark>{escape(s.text)}</mark>" if s.marked else str(escape(s.text))
                for s in self.headline
            )
        )
