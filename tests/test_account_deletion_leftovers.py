"""The purge leaves nothing behind (issue 12, item 5's test): an account made rich (users,
sessions, servers connected through the gateway to a real InspIRCd, lines stored, agents with
schedules, provider keys and tools, notifications, live-stream state, throttles, uploads, tasks
queued, an operator's admin log) is looked for everywhere, independently of the code under test:
every table of the public schema as pg_catalog lists it, every column of every row, and every
key of every Redis database the project uses (key names, and the messages of the broker's
queues). Before the purge the scan finds the account in each kind of place; after it, nowhere.
The other account is untouched."""

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import Account, User
from accounts.throttle import email_key
from agents.tasks import run_task
from channels_app.models import Channel, Notification, Server
from channels_app.services.chat import take_send_allowance
from channels_app.services.servers import request_channel_list
from channels_app.sse import take_stream_slot
from core.limits import take_allowance
from llms.models import Tool
from llms.services import configure_tool
from tenancy import switch
from tenancy.services import purge_account
from tests.conftest import signed_in_client
from tests.factories import PASSWORD, UserFactory
from tests.gateway_support import messages, wait_until
from tests.ircd import IrcBot, IrcServer, unique_channel
from tests.test_account_deletion import member_of, offline_world
from tests.test_agent_schedules import schedule
from tests.test_gateway import add_server
from tests.test_uploads import _upload


def redis_databases() -> list[str]:
    """Every Redis database named in the settings: the app's, the cache's, Celery's."""
    urls = {
        settings.REDIS_URL,
        settings.CACHES["default"]["LOCATION"],
        settings.CELERY_BROKER_URL,
        settings.CELERY_RESULT_BACKEND,
    }
    return sorted(urls)


def fragments_of(account: Account, users: list[User]) -> list[str]:
    ids = [account.pk, *(u.pk for u in users)]
    return [
        *(str(i) for i in ids),
        *(i.hex for i in ids),
        account.schema_name,
        *(email_key(u.email) for u in users),
    ]


def redis_leftovers(fragments: list[str]) -> list[str]:
    """ "db url: key" for every key whose name holds a fragment, and "db url: key holds ..." for
    every queued message (list element or hash value) that does."""
    found = []
    wanted = [f.encode() for f in fragments]
    for url in redis_databases():
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(count=1000):
            if any(f in key for f in wanted):
                found.append(f"{url}: {key.decode()}")
                continue
            kind = client.type(key)
            values: list[Any] = []
            if kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"hash":
                values = list(client.hvals(key))
            if any(f in value for value in values for f in wanted):
                found.append(f"{url}: {key.decode()} holds a message of the account")
        client.close()
    return sorted(found)


def public_tables() -> list[tuple[str, list[tuple[str, str]]]]:
    """(table, [(column, type)]) for every table of the public schema, from pg_catalog."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum
            """
        )
        tables: dict[str, list[tuple[str, str]]] = {}
        for table, column, kind in cursor.fetchall():
            tables.setdefault(table, []).append((column, kind))
    return sorted(tables.items())


def public_leftovers(needles: list[str]) -> dict[str, int]:
    """Rows per "table.column" whose value, as text, holds one of `needles`."""
    pattern = "|".join(re.escape(n) for n in needles)
    found: dict[str, int] = {}
    with connection.cursor() as cursor:
        for table, columns in public_tables():
            for column, kind in columns:
                if kind == "bytea":
                    continue
                cursor.execute(
                    f'SELECT count(*) FROM public."{table}" WHERE "{column}"::text ~ %s',
                    [pattern],
                )
                (count,) = cursor.fetchone()
                if count:
                    found[f"{table}.{column}"] = count
    return found


def schema_left(schema: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        return cursor.fetchone() is not None


def _raw(gateway: Any, user: User, server_id: int, line: str) -> None:
    payload = {
        "account_id": str(user.account.pk),
        "server_id": server_id,
        "op": "raw",
        "line": line,
    }
    gateway.call(gateway.gateway.handle_command(payload))


def test_the_purge_leaves_no_row_key_task_or_file_of_the_account(
    clean_schemas: None,
    inspircd: IrcServer,
    irc_bot: Callable[..., IrcBot],
    run_gateway: Callable,
    storage_dir: Path,
) -> None:
    alice = UserFactory(email="alice@example.org", account_name="Alice's place")
    bob = UserFactory(email="bob@example.org", account_name="Bob's place")
    operator = UserFactory(email="ops@example.org", account_name="Operators", is_staff=True)
    member = member_of(alice.account, "member@example.org")
    account = alice.account

    # Servers connected through the gateway, lines stored, a highlight, a channel list.
    channel_name = unique_channel()
    server_id = add_server(alice, inspircd, channels=(channel_name,))
    bob_server = add_server(bob, inspircd, channels=(channel_name,), nick="bob_p")
    carol = irc_bot(inspircd, "carol")
    carol.join(channel_name)
    gateway = run_gateway()
    carol.wait_for(r":alice_p!\S+ JOIN", timeout=15)
    carol.wait_for(r":bob_p!\S+ JOIN", timeout=15, since=0)
    carol.say(channel_name, "alice_p: are you there?")
    wait_until(lambda: messages(alice, text__startswith="alice_p: are"), what="the line stored")
    with switch(alice):
        wait_until(Notification.objects.exists, what="the highlight's notification")
        server = Server.objects.get(pk=server_id)
        request_channel_list(account_id=account.pk, server=server)

    # Agents with a schedule, a provider key, a tool; a queued agent run (no worker listens).
    world = offline_world(alice)
    with switch(alice):
        schedule(world)
        run_task.apply_async(args=[world.agent.pk * 1000])
        channel = Channel.objects.get(name=channel_name)
    configure_tool(account=account, tool=Tool.objects.order_by("pk")[0], enabled=True, settings={})

    # Sessions, uploads, live-stream slots, send and preview counters, throttles.
    browser = signed_in_client(alice)
    signed_in_client(member)
    assert (
        _upload(browser, channel, "notes.txt", b"words", content_type="text/plain").status_code
        == 201
    )
    assert any(p.is_file() for p in storage_dir.rglob("*"))

    async def slots() -> None:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        for user in (alice, member):
            assert await take_stream_slot(client, user_id=user.pk, stream_id="tab-1")
        await client.aclose()

    asyncio.run(slots())
    take_send_allowance(account_id=str(account.pk), lines=1)
    take_allowance(key=f"link-previews-per-minute:{account.pk}", wanted=1, limit=10)
    anonymous = Client()
    anonymous.post(reverse("accounts:sign_in"), {"email": member.email, "password": "wrong"})
    anonymous.post(reverse("accounts:password_reset"), {"email": alice.email})

    # An operator's admin log about the account and its user.
    LogEntry.objects.log_actions(
        user_id=operator.pk,
        queryset=Account.objects.filter(pk=account.pk),
        action_flag=CHANGE,
        change_message="budget",
    )
    LogEntry.objects.log_actions(
        user_id=operator.pk,
        queryset=User.objects.filter(pk=member.pk),
        action_flag=CHANGE,
        change_message="made admin",
    )

    # The deletion is asked for on the page (sessions end, the gateway lets go), then time passes.
    response = browser.post(
        reverse("accounts:account_delete"), {"account_name": account.name, "password": PASSWORD}
    )
    assert response.status_code == 302
    wait_until(lambda: gateway.connection(alice, server_id) is None, 5, "alice's connection gone")
    signed_in_client(alice)  # signs in during the grace period: a session again
    Client().post(reverse("accounts:sign_in"), {"email": alice.email, "password": "wrong"})

    users = [alice, member]
    fragments = fragments_of(account, users)
    needles = [*fragments, account.name, alice.email, member.email]
    bob_needles = [str(bob.pk), str(bob.account.pk), bob.account.schema_name]
    before_rows = public_leftovers(needles)
    before_keys = redis_leftovers(fragments)
    # The account is in every kind of place the scan looks: else the test could not fail.
    for table in (
        "accounts_account.id",
        "accounts_user.account_id",
        "accounts_session.user_id",
        "llms_accountllm.account_id",
        "llms_accounttool.account_id",
        "gateway_journal_position.account_id",
        "django_admin_log.object_id",
    ):
        assert table in before_rows, (table, before_rows)
    assert "scheduling_scheduleentry.account_id" not in before_rows  # unscheduled at the request
    for kind in (
        ":server-state:",
        ":channel-list:",
        ":sign-in-generation:",
        ":sse-streams:",
        ":sent-per-minute:",
        ":link-previews-per-minute:",
        ":sign-in:pair:",
        ":password-reset:email:",
        "holds a message of the account",
    ):
        assert any(kind in key for key in before_keys), (kind, before_keys)
    bob_rows, bob_keys = public_leftovers(bob_needles), redis_leftovers(bob_needles)
    assert bob_rows and bob_keys

    report = purge_account(account=account)

    assert public_leftovers(needles) == {}
    assert redis_leftovers(fragments) == []
    assert not schema_left(account.schema_name)
    assert not any(p.is_file() for p in storage_dir.rglob("*"))
    assert report.queued_tasks >= 1 and report.redis_keys >= 8
    assert report.rows["accounts_user"] == 2 and report.rows["accounts_account"] == 1
    # Bob's account is as it was, and still connected.
    assert set(public_leftovers(bob_needles)) == set(bob_rows)
    assert redis_leftovers(bob_needles) == bob_keys
    assert gateway.connection(bob, bob_server) is not None
