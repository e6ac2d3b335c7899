"""config.settings_test plus the migrations a test added at run time (tests.extra_migrations),
for a child process the test starts: PALAVER_EXTRA_MIGRATIONS holds {"paths": [directories to
import from], "modules": {app_label: migration package}}, as extra_migrations.child_environment()
writes it."""

import json
import os
import sys

from config.settings_test import *  # noqa: F403

_extra = json.loads(os.environ.get("PALAVER_EXTRA_MIGRATIONS") or "{}")
sys.path[:0] = [path for path in _extra.get("paths", []) if path not in sys.path]
MIGRATION_MODULES = dict(_extra.get("modules", {}))
