"""Write a development .env with fresh secrets, unless one exists. Never overwrites."""

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet

path = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
if path.exists():
    sys.exit(0)
path.write_text(
    "# Written by `make .env` for development. Do not use these values in production.\n"
    "DEBUG=true\n"
    f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
    f"SECRET_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
    "# Unset DATABASE_URL / REDIS_URL to use the embedded servers under var/.\n"
    "# DATABASE_URL=postgres://postgres@localhost:5432/palaver\n"
    "# REDIS_URL=redis://localhost:6379/0\n"
)
path.chmod(0o600)
print(f"wrote {path}")
