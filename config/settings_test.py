"""Test settings: the same real services, on a separate Redis database and test DB."""

import os
from urllib.parse import urlsplit, urlunsplit

from config.settings import *  # noqa: F403
from config.settings import REDIS_URL

# A database number of its own, so a test run never touches the development data
# (TEST_REDIS_DB lets two runs on one machine keep apart).
_parts = urlsplit(REDIS_URL)
# Under pytest-xdist each worker (gw0, gw1, ...) takes a database of its own, counting down
# from TEST_REDIS_DB (default 15).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_db = str(int(os.environ.get("TEST_REDIS_DB") or 15) - int(_worker.removeprefix("gw") or 0))
_TEST_REDIS = (
    urlunsplit(_parts._replace(path=f"/{_db}"))
    if _parts.scheme in ("redis", "rediss")
    else REDIS_URL
)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _TEST_REDIS,
        "KEY_PREFIX": "palaver-test",
    }
}
# Live events and gateway commands too (channels_app.events reads REDIS_URL).
REDIS_URL = _TEST_REDIS
# Pub/sub ignores database numbers: each worker of each run hears only its own events.
REDIS_CHANNEL_PREFIX = f"palaver-test-{_db}"
CELERY_BROKER_URL = _TEST_REDIS
CELERY_RESULT_BACKEND = _TEST_REDIS
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
DEBUG = False
# The IRC servers the tests start listen on loopback, which the address policy refuses by default.
OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
