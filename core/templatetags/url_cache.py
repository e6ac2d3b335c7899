"""Django's `{% url %}` tag, with the URL of a name without arguments reversed once per process.

Registered as a template builtin (config/settings.py, TEMPLATES), so it replaces Django's `url`
in every template without a `{% load %}`. Every page's chrome (base.html's nav and user menu)
reverses fourteen names without arguments on each render: reverse() walks the resolver each
time, about a third of rendering the chrome (docs/benchmarks.md, "The signed-in request's fixed
cost"). A URL depends only on the name, the URLconf, the script prefix, the current app and the
language, which form the cache key; a tag with arguments is reversed as Django does.
"""

from typing import Any

from django import template
from django.conf import settings
from django.core.signals import setting_changed
from django.template.base import Parser, Token
from django.template.defaulttags import URLNode
from django.template.defaulttags import url as django_url
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils.html import conditional_escape
from django.utils.translation import get_language

register = template.Library()

# (urlconf, script prefix, language, current app, name) -> URL. Bounded: names come from
# templates, but a `{% url some_variable %}` could feed it many.
_urls: dict[tuple[Any, ...], str] = {}
MAX_CACHED = 4096


def clear(**_kwargs: Any) -> None:
    _urls.clear()


# Tests change ROOT_URLCONF and the like with override_settings.
setting_changed.connect(clear, dispatch_uid="core.templatetags.url_cache.clear")


def _current_app(context: template.Context) -> Any:
    """Django's URLNode's: the request's current_app, else its resolved namespace."""
    try:
        return context.request.current_app  # type: ignore[attr-defined]
    except AttributeError:
        try:
            return context.request.resolver_match.namespace  # type: ignore[attr-defined]
        except AttributeError:
            return None


class CachedURLNode(URLNode):
    def render(self, context: template.Context) -> str:
        if self.args or self.kwargs:
            return str(super().render(context))
        view_name = self.view_name.resolve(context)
        current_app = _current_app(context)
        key = (
            get_urlconf(settings.ROOT_URLCONF),
            get_script_prefix(),
            get_language(),
            current_app,
            view_name,
        )
        url = _urls.get(key)
        if url is None:
            try:
                url = reverse(view_name, current_app=current_app)
            except NoReverseMatch:
                if self.asvar is None:
                    raise
                url = ""
            else:
                if len(_urls) < MAX_CACHED:
                    _urls[key] = url
        if self.asvar:
            context[self.asvar] = url
            return ""
        return str(conditional_escape(url)) if context.autoescape else url


@register.tag
def url(parser: Parser, token: Token) -> CachedURLNode:
    """Django's `{% url %}` (same syntax), cached when it has no arguments."""
    node = django_url(parser, token)
    return CachedURLNode(node.view_name, node.args, node.kwargs, node.asvar)
