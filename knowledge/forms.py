from typing import Any

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from core.uploads import too_large_message
from knowledge.models import KnowledgeBase

ALLOWED_SUFFIXES = (".txt", ".md", ".markdown")


class KnowledgeBaseForm(forms.ModelForm):
    class Meta:
        model = KnowledgeBase
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class DocumentForm(forms.Form):
    """A document comes from pasted text or from an uploaded .txt / .md file, not both.

    `upload_refusal` is why the upload was stopped while it streamed in (core.uploads), if it
    was: the file then never reached the form."""

    title = forms.CharField(
        max_length=200, required=False, help_text="Defaults to the file's name."
    )
    text = forms.CharField(
        label="Paste text", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 10})
    )
    file = forms.FileField(
        label="Or upload a file",
        required=False,
        help_text="Plain text or Markdown (.txt, .md), UTF-8.",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".txt,.md,.markdown,text/plain,text/markdown"}
        ),
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
            raise forms.ValidationError("Upload a .txt or .md file.")
        if upload.size is not None and upload.size > settings.LIMIT_DOCUMENT_BYTES:
            raise forms.ValidationError(too_large_message())
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.upload_refusal:
            self.add_error("file", self.upload_refusal)
            return cleaned
        text = cleaned.get("text") or ""
        upload = cleaned.get("file")
        if upload is not None and text.strip():
            raise forms.ValidationError("Paste text or upload a file, not both.")
        if upload is not None:
            raw = upload.read()
            try:
                decoded = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                self.add_error("file", "That file is not UTF-8 text.")
                return cleaned
            if "\x00" in decoded:
                self.add_error("file", "That file is not plain text.")
                return cleaned
            if not decoded.strip():
                self.add_error("file", "That file is empty.")
                return cleaned
            cleaned["text"] = decoded
            cleaned["filename"] = upload.name or ""
            if not cleaned.get("title"):
                cleaned["title"] = (upload.name or "Untitled").rsplit(".", 1)[0][:200]
        elif not text.strip():
            self.add_error("text", "Paste some text or upload a file.")
        else:
            limit = settings.LIMIT_DOCUMENT_BYTES
            if len(text.encode()) > limit:
                self.add_error(
                    "text",
                    f"That text is larger than the limit of {limit:,} bytes "
                    "(LIMIT_DOCUMENT_BYTES).",
                )
            cleaned["filename"] = ""
            if not cleaned.get("title"):
                self.add_error("title", "Give the pasted text a title.")
        return cleaned
