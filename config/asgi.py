import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)

# Like get_asgi_application(), with request bodies kept in memory and bounded (core.uploads).
from core.uploads import BoundedBodyASGIHandler  # noqa: E402

application = BoundedBodyASGIHandler()
