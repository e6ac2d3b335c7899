"""The other side of an account's move (tests/test_lifecycle_move.py): run as a child process
whose DATABASE_URL names another PostgreSQL server. It prepares that server as an operator would
(migrate_accounts), restores the archive with the same account id (restore_account), then signs
in through the sign-in page with the person's password and reads the account's pages and data.
It prints one JSON object: what it found.

    python -m tests.lifecycle_move_child ARCHIVE EMAIL PASSWORD
"""

import io
import json
import os
import sys
from typing import Any


def main(archive: str, email: str, password: str) -> dict[str, Any]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from accounts.models import User
    from channels_app.models import Message
    from knowledge.models import Document
    from llms.models import AccountLLM
    from tenancy import switch

    quiet = io.StringIO()
    call_command("migrate_accounts", stdout=quiet, stderr=quiet)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version_num'), current_setting('data_directory')"
        )
        server_version, data_directory = cursor.fetchone()
    call_command("restore_account", archive, stdout=quiet, stderr=quiet)

    user = User.objects.select_related("account").get(email=email)
    client = Client()
    signed_in = client.post(reverse("accounts:sign_in"), {"email": email, "password": password})
    wrong = Client().post(reverse("accounts:sign_in"), {"email": email, "password": "not it"})
    pages = {}
    for name in (
        "dashboard",
        "channels:server_list",
        "chat:index",
        "agents:agent_list",
        "knowledge:kb_list",
        "llms:provider_list",
    ):
        response = client.get(reverse(name), follow=True)
        pages[name] = [response.status_code, response.content.decode(errors="replace")]
    search = client.get(reverse("history:search"), {"q": "moved"})
    with switch(user):
        messages = Message.objects.count()
        documents = list(Document.objects.values_list("title", flat=True))
    keys = [c.api_key for c in AccountLLM.objects.filter(account=user.account)]
    return {
        "server_version": int(server_version),
        "data_directory": data_directory,
        "account": [str(user.account.pk), user.account.name, user.account.schema_name],
        "sign_in": [signed_in.status_code, signed_in.get("Location", "")],
        "wrong_password": wrong.status_code,
        "pages": pages,
        "search": [search.status_code, search.content.decode(errors="replace")],
        "messages": messages,
        "documents": documents,
        "api_keys": keys,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
