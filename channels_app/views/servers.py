import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from channels_app.forms import ChannelForm, ServerForm
from channels_app.models import Channel, Server
from channels_app.selectors.servers import (
    LIST_PAGE_SIZE,
    MAX_LIST_QUERY,
    ServerStatus,
    channel_listing,
    server_statuses,
)
from channels_app.services import servers as services
from channels_app.slash_commands import CommandError
from channels_app.validators import validate_channel_name
from core.views import back_url, confirm_delete, form_page

SECRETS = ("password", "sasl_password", "key")


def _account_id(request: HttpRequest) -> str:
    return str(request.user.account_id)  # type: ignore[union-attr]


# How often the server pages ask for the connection states again (an htmx poll of a fragment).
STATE_POLL_SECONDS = 2


@dataclass(frozen=True)
class ServerRow:
    server: Server
    status: ServerStatus


def _rows(request: HttpRequest, servers: Sequence[Server]) -> list[ServerRow]:
    statuses = server_statuses(request.user.account_id, [s.pk for s in servers])  # type: ignore[union-attr]
    return [ServerRow(s, statuses[s.pk]) for s in servers]


def _buffers(server: Server) -> QuerySet[Channel]:
    """The channels and conversations a person manages: never the gateway's server buffer."""
    return server.channels.exclude(kind=Channel.Kind.SERVER)


def _states(
    request: HttpRequest, rows: list[ServerRow], *, poll_url: str, detail: bool
) -> tuple[str, str]:
    """The state cells as the poll swaps them in (hx-swap-oob), and the poll's next URL: it
    carries a digest of what is shown, so that an unchanged state answers 204 and nothing is
    swapped (a screen reader hears the status region only when it changes)."""
    cells = render_to_string(
        "channels_app/_server_states.html", {"rows": rows, "detail": detail}, request=request
    )
    digest = hashlib.blake2b(cells.encode(), digest_size=8).hexdigest()
    return cells, f"{poll_url}?seen={digest}"


def _states_response(
    request: HttpRequest, rows: list[ServerRow], poll_url: str, *, detail: bool
) -> HttpResponse:
    cells, next_url = _states(request, rows, poll_url=poll_url, detail=detail)
    if next_url == request.get_full_path():
        return HttpResponse(status=204)  # unchanged: htmx swaps nothing
    poll = render_to_string(
        "channels_app/_server_state_poll.html",
        {"url": next_url, "poll_seconds": STATE_POLL_SECONDS, "oob": True},
    )
    return HttpResponse(cells + poll)


@login_required
def server_list(request: HttpRequest) -> HttpResponse:
    servers = list(
        Server.objects.annotate(
            channel_count=Count("channels", filter=Q(channels__kind=Channel.Kind.CHANNEL))
        )
    )
    rows = _rows(request, servers)
    poll_url = reverse("channels:server_states")
    return render(
        request,
        "channels_app/server_list.html",
        {
            "rows": rows,
            "poll_url": _states(request, rows, poll_url=poll_url, detail=False)[1],
            "poll_seconds": STATE_POLL_SECONDS,
        },
    )


@login_required
def server_states(request: HttpRequest) -> HttpResponse:
    """Every server's state cell, for the list page's poll."""
    servers = list(Server.objects.only("pk"))
    return _states_response(
        request, _rows(request, servers), reverse("channels:server_states"), detail=False
    )


@login_required
def server_state(request: HttpRequest, pk: int) -> HttpResponse:
    """One server's state and last error, for its page's poll."""
    server = get_object_or_404(Server.objects.only("pk"), pk=pk)
    return _states_response(
        request, _rows(request, [server]), reverse("channels:server_state", args=[pk]), detail=True
    )


@login_required
def server_detail(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(Server, pk=pk)
    rows = _rows(request, [server])
    poll_url = reverse("channels:server_state", args=[pk])
    return render(
        request,
        "channels_app/server_detail.html",
        {
            "server": server,
            "channels": _buffers(server),
            "status": rows[0].status,
            "poll_url": _states(request, rows, poll_url=poll_url, detail=True)[1],
            "poll_seconds": STATE_POLL_SECONDS,
        },
    )


@login_required
@sensitive_post_parameters(*SECRETS)
def server_create(request: HttpRequest) -> HttpResponse:
    return _server_form(request, Server(), title="Add a server", submit="Add server")


@login_required
@sensitive_post_parameters(*SECRETS)
def server_edit(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(Server, pk=pk)
    return _server_form(request, server, title=f"Edit {server}", submit="Save")


def _server_form(request: HttpRequest, server: Server, *, title: str, submit: str) -> HttpResponse:
    form = ServerForm(request.POST or None, instance=server)

    def save() -> HttpResponse:
        if "channels" in form.cleaned_data:  # adding: the channels too, in one transaction
            saved = services.connect_server(
                account_id=_account_id(request),
                server=form.instance,
                alt_nicks=form.cleaned_data["alt_nicks"],
                secrets=form.secret_changes(),
                channels=form.cleaned_data["channels"],
            )
        else:
            saved = services.save_server(
                account_id=_account_id(request),
                server=form.instance,
                alt_nicks=form.cleaned_data["alt_nicks"],
                secrets=form.secret_changes(),
            )
        return redirect("channels:server_detail", pk=saved.pk)

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=back_url(server, "channels:server_detail", "channels:server_list"),
        template_name="channels_app/server_form.html",
    )


@login_required
def server_delete(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(Server, pk=pk)
    return confirm_delete(
        request,
        obj=server,
        delete=lambda: services.delete_server(account_id=_account_id(request), server=server),
        cancel_url=reverse("channels:server_detail", args=[server.pk]),
        success_url=reverse("channels:server_list"),
        consequences=[
            f"{server.channels.count()} channels and conversations, with all their history",
            "agents lose their seats in those channels",
        ],
    )


@login_required
@sensitive_post_parameters(*SECRETS)
def channel_create(request: HttpRequest, server_pk: int) -> HttpResponse:
    server = get_object_or_404(Server, pk=server_pk)
    return _channel_form(
        request, Channel(), server, title=f"Add a channel on {server}", submit="Add"
    )


@login_required
@sensitive_post_parameters(*SECRETS)
def channel_edit(request: HttpRequest, pk: int) -> HttpResponse:
    # The server buffer is the gateway's: not editable (nor deletable) as a channel.
    channel = get_object_or_404(
        Channel.objects.select_related("server").exclude(kind=Channel.Kind.SERVER), pk=pk
    )
    return _channel_form(request, channel, channel.server, title=f"Edit {channel}", submit="Save")


def _channel_form(
    request: HttpRequest, channel: Channel, server: Server, *, title: str, submit: str
) -> HttpResponse:
    form = ChannelForm(request.POST or None, instance=channel, server=server)

    def save() -> HttpResponse:
        services.save_channel(
            account_id=_account_id(request), channel=form.instance, secrets=form.secret_changes()
        )
        return redirect("channels:server_detail", pk=server.pk)

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=reverse("channels:server_detail", args=[server.pk]),
    )


@login_required
def channel_delete(request: HttpRequest, pk: int) -> HttpResponse:
    channel = get_object_or_404(
        Channel.objects.select_related("server").exclude(kind=Channel.Kind.SERVER), pk=pk
    )
    back = reverse("channels:server_detail", args=[channel.server_id])
    return confirm_delete(
        request,
        obj=channel,
        delete=lambda: services.delete_channel(account_id=_account_id(request), channel=channel),
        cancel_url=back,
        success_url=back,
        consequences=[f"{channel.messages.count()} stored lines of history"],
    )


# --- /list: the network's channels ----------------------------------------------------------


def _offset(request: HttpRequest) -> int:
    raw = request.GET.get("offset", "")
    return min(int(raw), 1_000_000) if raw.isdigit() else 0


def _list_context(request: HttpRequest, server: Server) -> dict[str, object]:
    query = request.GET.get("q", "")[:MAX_LIST_QUERY]
    offset = _offset(request)
    listing = channel_listing(request.user.account_id, server.pk, query=query, offset=offset)  # type: ignore[union-attr]
    joined = {
        name.lower()
        for name in Channel.objects.filter(server=server, kind=Channel.Kind.CHANNEL).values_list(
            "name", flat=True
        )
    }
    return {
        "server": server,
        "listing": listing,
        "query": query,
        "offset": offset,
        "next_offset": (
            offset + LIST_PAGE_SIZE if offset + LIST_PAGE_SIZE < listing.matching else None
        ),
        "previous_offset": max(0, offset - LIST_PAGE_SIZE) if offset else None,
        "joined": joined,
        "poll_seconds": 1,
        # /list typed in the chat: the page asks for the list as it opens (a POST, by htmx).
        "fetch": request.GET.get("fetch") == "1" and listing.state != "receiving",
    }


@login_required
def channel_list(request: HttpRequest, pk: int) -> HttpResponse:
    """The channels the network lists (/list), searchable by name and topic, with Join
    buttons. The list is asked for by a POST (the "Get the list" button, or htmx as the page
    opens from /list in the chat); while it arrives, the results part polls itself (htmx)."""
    server = get_object_or_404(Server.objects.only("pk", "name"), pk=pk)
    context = _list_context(request, server)
    template = (
        "channels_app/_channel_list_results.html"
        if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "list-results"
        else "channels_app/channel_list.html"
    )
    return render(request, template, context)


@login_required
@require_POST
def channel_list_refresh(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask for the list again. From htmx, the results part comes back (now receiving)."""
    server = get_object_or_404(Server.objects.only("pk", "name"), pk=pk)
    error = ""
    try:
        services.request_channel_list(account_id=_account_id(request), server=server)
    except CommandError as exc:
        error = str(exc)
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        error = "Could not reach the IRC gateway; the list was not asked for."
    if request.headers.get("HX-Request"):
        context = _list_context(request, server) | {"fetch": False, "error": error}
        return render(request, "channels_app/_channel_list_results.html", context)
    if error:
        messages.error(request, error)
    return redirect(reverse("channels:channel_list", args=[server.pk]))


@login_required
@require_POST
def channel_list_join(request: HttpRequest, pk: int) -> HttpResponse:
    """Join a channel of the list: added to the server's channels, joined by the gateway, and
    opened in the chat."""
    server = get_object_or_404(Server, pk=pk)
    name = request.POST.get("channel", "").strip()
    back = reverse("channels:channel_list", args=[server.pk])
    try:
        validate_channel_name(name)
        channel = services.join_listed_channel(
            account_id=_account_id(request), server=server, name=name
        )
    except ValidationError as exc:
        messages.error(request, f"Could not join {name[:60]!r}: {' '.join(exc.messages)}")
        return redirect(back)
    return redirect(reverse("chat:channel", args=[channel.pk]))


def _is_redis_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, redis.RedisError)
