"""System checks on the deployment's configuration (`manage.py check`, run by most commands)."""

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security)
def redis_requires_a_password(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A Redis reached over TCP without a password can be driven by anything that can open a
    connection to it (an IRC server address pointed at it, another process on the host), and it
    holds the gateway's commands and the live events. Checked whenever DEBUG is off rather than
    only under `check --deploy`: that flag is easily never run, and DEBUG off is what a
    deployment looks like. A development machine (DEBUG on) is spared the noise; a deployment
    whose Redis is protected otherwise can silence it (SILENCED_SYSTEM_CHECKS)."""
    if settings.DEBUG:
        return []
    url = urlsplit(settings.REDIS_URL)
    # A Unix socket is guarded by its file permissions, and no TCP connection reaches it.
    if url.scheme not in ("redis", "rediss") or url.password:
        return []
    return [
        Warning(
            "REDIS_URL has no password while DEBUG is off.",
            hint="Set `requirepass` (or an ACL user) on the Redis server and put the password "
            "in REDIS_URL: redis://:PASSWORD@host:6379/0.",
            id="palaver.W001",
        )
    ]
