#!/usr/bin/env python
"""`make lint`'s migration check: account-app migrations that lock a whole table of a busy
account (a rewrite or a full scan under an exclusive lock) fail it until their author changes or
acknowledges them. What is flagged and why: tenancy/migration_lint.py. Exit status 1 when one is
not acknowledged; -v also lists the acknowledged ones.

It needs the database (it applies the migrations in a scratch schema, inside a transaction it
rolls back), which is why it is a script the lint target runs and not a Django system check:
system checks run before every management command (runserver, migrate, the tests), where
applying every migration would cost seconds each time and would block a deploy's migrate on a
question that belongs to the migration's author.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also list acknowledged statements"
    )
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    from config.errors import exit_on_unreachable_database

    with exit_on_unreachable_database():
        django.setup()
        from tenancy.migration_lint import check, format_report

        report = check()
    print(format_report(report, verbose=args.verbose))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
