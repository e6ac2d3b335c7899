import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# The web's requests take turns on a pool of database connections (config/settings.py,
# DATABASE_POOL): under ASGI nothing else carries a connection from one request to the next.
os.environ.setdefault("DATABASE_POOL", "true")
django.setup(set_prefix=False)

# Like get_asgi_application(), with request bodies kept in memory and bounded (core.uploads),
# and a sync view served on one pool thread in one hop (core.handlers).
from core.handlers import PalaverASGIHandler  # noqa: E402

application = PalaverASGIHandler()

# The web holds thousands of long-lived objects (open streams, their queues and tasks): with
# the default thresholds every full collection walked them all, stalling every stream of the
# process for tens of milliseconds (fan-out p99 99 ms -> 4.4 ms at 10,000 deliveries/s with
# these; docs/benchmarks.md, "Live streams at scale"). What was imported at start-up never
# becomes garbage: frozen, it is not walked at all; young collections run 70 times rarer.
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 20)
