from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from accounts.models import Account
from core.uploads import too_large_message
from knowledge.models import KnowledgeBase
from llms.models import LLM
from llms.selectors import account_llms

ALLOWED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
ACCEPT = ".txt,.md,.markdown,.html,.htm,.pdf,text/plain,text/markdown,text/html,application/pdf"


class KnowledgeBaseForm(forms.ModelForm):
    """A knowledge base: its name, its language and, for vector search, an embedding model
    served by one of the account's OpenAI-compatible providers."""

    class Meta:
        model = KnowledgeBase
        fields = ["name", "description", "language", "embedding_llm", "embedding_model"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args: Any, account: Account, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["embedding_llm"]
        # Only this account's providers, and only those speaking OpenAI's /embeddings.
        field.queryset = account_llms(account=account).filter(  # type: ignore[attr-defined]
            llm__kind=LLM.Kind.OPENAI
        )
        field.empty_label = "None: full-text search only"  # type: ignore[attr-defined]
        field.help_text = (
            "One of your OpenAI-compatible providers (OpenAI, Ollama…), for vector search."
        )
        language = self.fields["language"]
        language.help_text += " Changing it indexes the documents again."
        # Left out (a script, an older form): the knowledge base keeps its language.
        language.required = False

    def clean_language(self) -> str:
        return str(self.cleaned_data.get("language") or self.instance.language)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        model = (cleaned.get("embedding_model") or "").strip()
        cleaned["embedding_model"] = model
        self.instance.embedding_model = model
        provider = cleaned.get("embedding_llm")
        if provider and not model:
            self.add_error("embedding_model", "Name the embedding model the provider serves.")
        elif model and not provider and "embedding_llm" not in self.errors:
            self.add_error("embedding_llm", "Choose the provider that serves this model.")
        return cleaned


class DocumentForm(forms.Form):
    """A document is pasted text, an uploaded file (.txt, .md, .html, .pdf) or a web address
    to import: exactly one. The file is kept as it came; the worker extracts its text (and
    fetches the address) after the form is saved.

    `upload_refusal` is why the upload was stopped while it streamed in (core.uploads), if it
    was: the file then never reached the form."""

    title = forms.CharField(
        max_length=200,
        required=False,
        help_text="Defaults to the file's name, or the page's title for an address.",
    )
    text = forms.CharField(
        label="Paste text", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 10})
    )
    file = forms.FileField(
        label="Or upload a file",
        required=False,
        help_text="Text, Markdown, HTML or PDF (.txt, .md, .html, .pdf).",
        widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}),
    )
    url = forms.URLField(
        label="Or import a web page",
        required=False,
        max_length=2000,
        assume_scheme="https",
        help_text="An http:// or https:// address of a page, a PDF or a text file.",
    )

    def __init__(self, *args: Any, upload_refusal: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upload_refusal = upload_refusal
        limit = settings.LIMIT_DOCUMENT_BYTES
        self.fields["file"].help_text += f" Up to {limit:,} bytes."

    def clean_file(self) -> UploadedFile | None:
        upload: UploadedFile | None = self.cleaned_data.get("file")
        if upload is None:
            return None
        name = (upload.name or "").lower()
        if not name.endswith(ALLOWED_SUFFIXES):
            raise forms.ValidationError("Upload a .txt, .md, .html or .pdf file.")
        if upload.size is not None and upload.size > settings.LIMIT_DOCUMENT_BYTES:
            raise forms.ValidationError(too_large_message())
        return upload

    def clean_url(self) -> str:
        url: str = (self.cleaned_data.get("url") or "").strip()
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise forms.ValidationError("Only http:// and https:// addresses can be imported.")
        return url

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.upload_refusal:
            self.add_error("file", self.upload_refusal)
            return cleaned
        if self.errors:
            return cleaned
        text = cleaned.get("text") or ""
        upload = cleaned.get("file")
        url = cleaned.get("url") or ""
        given = [bool(text.strip()), upload is not None, bool(url)]
        if sum(given) > 1:
            raise forms.ValidationError(
                "Paste text, upload a file or give an address: one of them, not several."
            )
        cleaned.update(text="", data=None, filename="", content_type="", url=url)
        if upload is not None:
            data = upload.read()
            if not data.strip():
                self.add_error("file", "That file is empty.")
                return cleaned
            cleaned["data"] = data
            cleaned["filename"] = upload.name or ""
            cleaned["content_type"] = upload.content_type or ""
            if not cleaned.get("title"):
                cleaned["title"] = (upload.name or "Untitled").rsplit(".", 1)[0][:200]
        elif url:
            pass  # the title, if empty, is the page's own once fetched
        elif not text.strip():
            self.add_error("text", "Paste some text, upload a file or give a web address.")
        else:
            limit = settings.LIMIT_DOCUMENT_BYTES
            if len(text.encode()) > limit:
                self.add_error(
                    "text",
                    f"That text is larger than the limit of {limit:,} bytes "
                    "(LIMIT_DOCUMENT_BYTES).",
                )
            cleaned["text"] = text
            if not cleaned.get("title"):
                self.add_error("title", "Give the pasted text a title.")
        return cleaned
