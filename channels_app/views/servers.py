from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters

from channels_app.forms import ChannelForm, ServerForm
from channels_app.models import Channel, Server
from channels_app.services import servers as services
from core.views import back_url, confirm_delete, form_page

SECRETS = ("password", "sasl_password", "key")


def _account_id(request: HttpRequest) -> str:
    return str(request.user.account_id)  # type: ignore[union-attr]


@login_required
def server_list(request: HttpRequest) -> HttpResponse:
    servers = Server.objects.annotate(
        channel_count=Count("channels", filter=Q(channels__kind=Channel.Kind.CHANNEL))
    )
    return render(request, "channels_app/server_list.html", {"servers": servers})


@login_required
def server_detail(request: HttpRequest, pk: int) -> HttpResponse:
    server = get_object_or_404(Server, pk=pk)
    return render(
        request,
        "channels_app/server_detail.html",
        {"server": server, "channels": server.channels.all()},
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
    channel = get_object_or_404(Channel.objects.select_related("server"), pk=pk)
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
    channel = get_object_or_404(Channel.objects.select_related("server"), pk=pk)
    back = reverse("channels:server_detail", args=[channel.server_id])
    return confirm_delete(
        request,
        obj=channel,
        delete=lambda: services.delete_channel(account_id=_account_id(request), channel=channel),
        cancel_url=back,
        success_url=back,
        consequences=[f"{channel.messages.count()} stored lines of history"],
    )
