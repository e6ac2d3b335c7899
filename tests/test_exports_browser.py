"""'Download my data' in Chromium: sign in, click it on the account page, watch the bar and its
counts move while a real Celery worker builds the archive, download it, and open it as a zip with
the logs inside."""

import time
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.urls import reverse
from playwright.sync_api import Browser, expect

from accounts.models import User
from channels_app.models import Channel, Message
from exports.archive import ROOT
from exports.models import Export
from tenancy import switch
from tests.conftest import storages_with
from tests.factories import PASSWORD, UserFactory
from tests.test_browser import screenshot
from tests.test_chat_e2e import DESKTOP, PHONE, AsgiServer, chromium, serving, uvicorn_env
from tests.test_exports import T0, furnish
from tests.workers import threads_worker

__all__ = ["chromium"]

# Enough lines that the export takes seconds (~50,000 lines/s here, slower under load): the
# page, asking every second, is seen moving.
LINES = 200_000
BATCH = 500


@pytest.fixture
def web(clean_schemas: None, tmp_path: Path) -> Iterator[tuple[AsgiServer, Path]]:
    """The web under uvicorn and the worker in this process, sharing an exports directory of
    the test's own."""
    location = tmp_path / "exports"
    redis_url = settings.CACHES["default"]["LOCATION"]
    env = uvicorn_env(redis_url) | {"EXPORTS_DIR": str(location)}
    stores = storages_with("exports", location)
    with (
        override_settings(REDIS_URL=redis_url, STORAGES=stores, EXPORT_BATCH_LINES=BATCH),
        serving(env, tmp_path) as server,
    ):
        yield server, location


@pytest.mark.browser
def test_download_my_data_shows_progress_and_downloads_a_zip(
    web: tuple[AsgiServer, Path], chromium: Browser, tmp_path: Path
) -> None:
    server, location = web
    base = server.url
    alice = cast(User, UserFactory(email="alice@example.org", account_name="Alice's place"))
    furnish(alice)
    with switch(alice), connection.cursor() as cursor:
        channel = Channel.objects.get(name="#palaver")
        cursor.execute(
            f"INSERT INTO {Message._meta.db_table} "
            "(channel_id, kind, sender, text, server_time, msgid, tags, created_at) "
            "SELECT %s, 'message', 'carol', 'line ' || n, %s + n * interval '1 second', '', "
            "'{}', now() FROM generate_series(0, %s) AS n",
            [channel.pk, T0 + timedelta(days=3), LINES - 1],
        )
        total = Message.objects.count()

    context = cast(Any, chromium).new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(base + reverse("accounts:sign_in"))
    page.get_by_label("Email").fill(alice.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(base + reverse("dashboard"))

    page.get_by_role("link", name="Account", exact=True).click()
    page.get_by_role("button", name="Download my data").click()
    with switch(alice):
        export = Export.objects.get()
    expect(page).to_have_url(base + reverse("exports:detail", args=[export.pk]))
    status = page.locator(".export-status")
    # No worker yet: queued, the bar at zero of every line.
    expect(status).to_have_attribute("data-state", "queued")
    expect(status).to_contain_text(f"0 of {total:,} lines")
    expect(page.get_by_role("progressbar")).to_have_attribute("value", "0")
    screenshot(page, "export-queued.png")

    seen: list[tuple[str, int, str]] = []
    with threads_worker(1, queues=("celery",)):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = status.get_attribute("data-state") or ""
            if state == "running":
                bar = page.get_by_role("progressbar")
                seen.append((state, int(bar.get_attribute("value") or 0), status.inner_text()))
                if len(seen) == 1:
                    screenshot(page, "export-running.png")
            if state in ("ready", "failed"):
                break
            # Not more often: this thread shares the interpreter with the worker's.
            page.wait_for_timeout(400)
    expect(status).to_have_attribute("data-state", "ready")
    with switch(alice):
        export.refresh_from_db()
    assert export.started_at and export.finished_at
    print(  # figures for a reader of `pytest -s`
        f"export: {total:,} lines in {(export.finished_at - export.started_at).total_seconds():.1f}"
        f" s, queued {(export.started_at - export.created_at).total_seconds():.1f} s; "
        f"the page showed it under way {len(seen)} times"
    )
    # The bar moved, with counts and the time left, while the worker wrote.
    moving = [value for _, value, _ in seen if 0 < value < total]
    assert moving, f"the page never showed the export under way: {seen[:5]}"
    assert any(" left" in text and f"of {total:,} lines" in text for _, _, text in seen), seen[:5]
    assert moving == sorted(moving)
    expect(status).to_contain_text(f"{total:,} of {total:,} lines")
    screenshot(page, "export-ready.png")

    with page.expect_download() as info:
        page.get_by_role("link", name="Download the archive").click()
    download = info.value
    assert download.suggested_filename.startswith("palaver-Alice")
    assert download.suggested_filename.endswith(".zip")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert f"{ROOT}/README.txt" in names
        day = archive.read(f"{ROOT}/logs/Libera/#palaver/2026-03-04.log").decode()
        assert day.startswith("[21:00:00] <carol> line 0\n")
        assert sum(1 for n in names if n.startswith(f"{ROOT}/logs/")) >= 5

    # On a phone, the finished export's page.
    page.set_viewport_size(PHONE)
    page.reload()
    expect(page.get_by_role("link", name="Download the archive")).to_be_visible()
    screenshot(page, "export-ready-phone.png")
    context.close()
    assert any(location.rglob("*.zip"))
