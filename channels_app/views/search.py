"""Search over the account's history (GET /search/)."""

from datetime import date, datetime, time, timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from channels_app.forms import SearchForm
from channels_app.models import Channel
from channels_app.selectors.search import Cursor, SearchPage, SearchQueryError, search_messages


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    form = SearchForm(request.GET or None)
    page: SearchPage | None = None
    problem = ""
    next_url = ""
    status = 200
    if form.is_bound and not form.is_valid():
        status = 400
    elif form.is_bound:
        data = form.cleaned_data
        channel: Channel | None = data["channel"]
        try:
            page = search_messages(
                data["q"],
                channel_id=channel.pk if channel else None,
                nick=data["nick"],
                since=_day_start(data["since"]) if data["since"] else None,
                # The end date is inclusive: everything before the next day starts.
                until=_day_start(data["until"] + timedelta(days=1)) if data["until"] else None,
                before=Cursor.decode(data["before"]),
            )
        except SearchQueryError as exc:
            problem = str(exc)
        if page is not None and page.next_cursor is not None:
            params = request.GET.copy()
            params["before"] = page.next_cursor.encode()
            next_url = f"?{params.urlencode()}"
    return render(
        request,
        "channels_app/search.html",
        {
            "form": form,
            "page": page,
            "problem": problem,
            "next_url": next_url,
            "paged": bool(form.is_bound and form.data.get("before")),
            # The filters stay open once used, or when one of them has an error.
            "filtered": any(
                form.data.get(name) or form.errors.get(name)
                for name in ("channel", "nick", "since", "until")
            ),
        },
        status=status,
    )
