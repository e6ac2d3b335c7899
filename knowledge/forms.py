from typing import Any

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from knowledge.models import KnowledgeBase

ALLOWED_SUFFIXES = (".txt", ".md", ".markdown")


class KnowledgeBaseForm(forms.ModelForm):
    class Meta:
        model = KnowledgeBase
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class DocumentForm(forms.Form):
    """A document comes from pasted text or from an uploaded .txt / .md file, not both."""

    title = forms.CharField(
        max_length=200, required=False, help_text="Defaults to the file's name."
    )
    text = forms.CharField(
        label="Paste text", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 10})
    )
    file = forms.FileField(
        label="Or upload a file",
        required=False,
        help_text="Plain text or Markdown (.txt, .md), UTF-8, up to 1 MB.",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".txt,.md,.markdown,text/plain,text/markdown"}
        ),
    )

    def clean_file(self) -> UploadedFile | None:
        upload: UploadedFile | None = self.cleaned_data.get("file")
        if upload is None:
            return None
        name = (upload.name or "").lower()
        if not name.endswith(ALLOWED_SUFFIXES):
            raise forms.ValidationError("Upload a .txt or .md file.")
        if upload.size is not None and upload.size > settings.KNOWLEDGE_MAX_DOCUMENT_BYTES:
            raise forms.ValidationError("That file is larger than 1 MB.")
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
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
            if len(text.encode()) > settings.KNOWLEDGE_MAX_DOCUMENT_BYTES:
                self.add_error("text", "That text is larger than 1 MB.")
            cleaned["filename"] = ""
            if not cleaned.get("title"):
                self.add_error("title", "Give the pasted text a title.")
        return cleaned
