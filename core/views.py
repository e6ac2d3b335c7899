"""The page shapes every app repeats: a form page and a delete confirmation."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse


def back_url(obj: Any, detail: str, fallback: str) -> str:
    """Where Cancel goes: the object's page once it exists, else the list."""
    return reverse(detail, args=[obj.pk]) if obj.pk else reverse(fallback)


def form_page(
    request: HttpRequest,
    form: forms.BaseForm,
    *,
    on_valid: Callable[[], HttpResponse] | None = None,
    title: str,
    submit_label: str,
    cancel_url: str,
    intro: str = "",
    multipart: bool = False,
    status: int = 200,
    template_name: str = "core/form_page.html",
) -> HttpResponse:
    """A form on a page of its own; a valid POST goes to `on_valid`, which saves and redirects.
    A ValidationError from the save (a limit reached, a check only the transaction can make)
    is shown on the form like any other error. A long form may lay its fields out in a
    template of its own (`template_name`, extending core/form_page.html)."""
    if on_valid is not None and request.method == "POST" and form.is_valid():
        try:
            return on_valid()
        except ValidationError as exc:
            form.add_error(None, exc)
    return render(
        request,
        template_name,
        {
            "form": form,
            "title": title,
            "submit_label": submit_label,
            "cancel_url": cancel_url,
            "intro": intro,
            "multipart": multipart,
        },
        status=status if not form.is_bound or form.is_valid() else 400,
    )


def confirm_delete(
    request: HttpRequest,
    *,
    obj: Any,
    delete: Callable[[], None],
    cancel_url: str,
    success_url: str,
    consequences: list[str],
    error_types: tuple[type[Exception], ...] = (),
) -> HttpResponse:
    """GET shows what deleting `obj` will take with it; POST does it."""
    error = ""
    if request.method == "POST":
        try:
            delete()
        except error_types as exc:
            error = f"{obj} cannot be deleted: {exc}."
        else:
            messages.success(request, f"Deleted {obj}.")
            return HttpResponseRedirect(success_url)
    return render(
        request,
        "core/confirm_delete.html",
        {
            "object": obj,
            "consequences": consequences,
            "cancel_url": cancel_url,
            "error": error,
        },
        status=409 if error else 200,
    )
