"""{% load irc_format %}: IRC text in templates.

{{ message.text|irc_html }} renders mIRC formatting and links as safe HTML (the page must link
static/css/irc-colours.css); {{ text|irc_plain }} drops the codes, for titles and snippets.
"""

from django import template
from django.utils.safestring import SafeString

from channels_app.formatting import render_irc_html, strip_irc_formatting

register = template.Library()


@register.filter(is_safe=True)
def irc_html(value: object) -> SafeString:
    # Whatever arrives (even a SafeString) is IRC text, never markup: render_irc_html escapes it.
    return render_irc_html("" if value is None else str(value))


@register.filter
def irc_plain(value: object) -> str:
    return strip_irc_formatting("" if value is None else str(value))
