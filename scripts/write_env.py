"""Write a development .env with fresh secrets. Never changes a value that is there.

    python scripts/write_env.py [.env]

An existing file keeps every line; a generated secret it lacks (one added to Palaver after the
file was written, such as EMBEDDED_REDIS_PASSWORD) is appended, so `make` brings an old .env up
to date without touching what someone set by hand.
"""

import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

HEADER = "# Written by `make .env` for development. Do not use these values in production.\n"
FOOTER = (
    "# Unset DATABASE_URL / REDIS_URL to use the embedded servers under var/.\n"
    "# DATABASE_URL=postgres://postgres@localhost:5432/palaver\n"
    "# REDIS_URL=redis://localhost:6379/0\n"
)

# Each generated variable and how to make a fresh value, in the order a new file lists them.
GENERATED: dict[str, Callable[[], str]] = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "SECRET_ENCRYPTION_KEYS": lambda: Fernet.generate_key().decode(),
    # The embedded Redis's requirepass (config/embedded.py); unused when REDIS_URL is set.
    "EMBEDDED_REDIS_PASSWORD": lambda: secrets.token_urlsafe(32),
}


def assigned_names(text: str) -> set[str]:
    """Variables the file sets (commented-out lines do not count)."""
    names = set()
    for line in text.splitlines():
        name, equals, _value = line.strip().removeprefix("export ").partition("=")
        if equals and name and not name.startswith("#"):
            names.add(name.strip())
    return names


def main(path: Path) -> None:
    if not path.exists():
        lines = [f"{name}={make()}\n" for name, make in GENERATED.items()]
        path.touch(mode=0o600)
        path.write_text(HEADER + "DEBUG=true\n" + "".join(lines) + FOOTER)
        path.chmod(0o600)
        print(f"wrote {path}")
        return
    text = path.read_text()
    missing = [name for name in GENERATED if name not in assigned_names(text)]
    if missing:
        added = "".join(f"{name}={GENERATED[name]()}\n" for name in missing)
        separator = "" if not text or text.endswith("\n") else "\n"
        with path.open("a") as handle:
            handle.write(f"{separator}# Added by `make .env`:\n{added}")
        print(f"added {', '.join(missing)} to {path}")
    path.touch()  # up to date: make need not run this again until the script changes


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".env"))
