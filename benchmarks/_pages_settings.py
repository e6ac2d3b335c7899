"""Settings of the web benchmarks/pages.py starts: the project's, plus a bare view.

The bare view is the anchor of DESIGN.md's pages target: a Django view returning a few bytes,
through the same middleware, on the same server, unauthenticated. It is reachable only with
these settings (DJANGO_SETTINGS_MODULE=benchmarks._pages_settings), never in a deployment.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks._pages_urls"
