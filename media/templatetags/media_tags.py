from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def upload_max_bytes() -> int:
    """LIMIT_UPLOAD_BYTES, for the chat to refuse a larger file before sending it."""
    return int(settings.LIMIT_UPLOAD_BYTES)
