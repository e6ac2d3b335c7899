from django import forms

from knowledge.selectors import MAX_QUERY_LENGTH


class PassageSearchForm(forms.Form):
    """The search box of a knowledge base's page (knowledge.views.kb_search)."""

    q = forms.CharField(
        label="Search this knowledge base",
        required=False,
        max_length=MAX_QUERY_LENGTH,
        strip=True,
        widget=forms.TextInput(
            attrs={"placeholder": "e.g. release checklist -draft", "enterkeyhint": "search"}
        ),
        help_text='Words match whatever their ending (“run” finds “running”). "exact phrase", '
        "-left out, this OR that. The passages come back as an agent's knowledge search "
        "finds them.",
    )
