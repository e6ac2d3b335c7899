"""The Tasks page: the account's scheduled tasks (list, create, pause, resume, run now, cancel)
and its recent runs. Every schedule is fetched in the account's schema, so another account's
id is a 404."""

import zoneinfo
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render

from accounts.models import User
from agents.forms import ScheduleForm
from agents.models import Schedule, Task
from agents.services import schedules as services
from llms.selectors import account_timezone

RECENT_RUNS = 50


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def task_list(request: HttpRequest) -> HttpResponse:
    """GET shows the page; POST creates a scheduled task from its form."""
    user = _user(request)
    timezone = account_timezone(account=user.account)
    form = ScheduleForm(request.POST or None, timezone=timezone)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.create_schedule(
                    agent=form.cleaned_data["agent"],
                    prompt=form.cleaned_data["prompt"],
                    channel=form.cleaned_data["channel"],
                    when=form.cleaned_data["when"] or None,
                    repeat=form.cleaned_data["repeat"] or None,
                    timezone=timezone,
                    created_by=user.email,
                )
            except ValueError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Scheduled.")
                return redirect("agents:task_list")
        status = 400
    zone = zoneinfo.ZoneInfo(timezone)
    schedules = Schedule.objects.select_related("agent", "channel", "channel__server").order_by(
        "state", "next_run_at", "pk"
    )
    rows: list[dict[str, Any]] = [
        {
            "schedule": s,
            "next_run": s.next_run_at.astimezone(zone) if s.next_run_at else None,
            "last_run": s.last_run_at.astimezone(zone) if s.last_run_at else None,
        }
        for s in schedules
    ]
    runs = Task.objects.select_related("agent", "channel")[:RECENT_RUNS]
    return render(
        request,
        "agents/task_list.html",
        {"form": form, "rows": rows, "runs": runs, "timezone": timezone},
        status=status,
    )


def _schedule_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    schedule = get_object_or_404(Schedule, pk=pk)
    try:
        if action == "pause":
            services.pause_schedule(schedule=schedule)
            messages.success(request, "Paused.")
        elif action == "resume":
            services.resume_schedule(schedule=schedule)
            messages.success(request, "Resumed.")
        elif action == "cancel":
            services.cancel_schedule(schedule=schedule)
            messages.success(request, "Cancelled.")
        else:
            services.run_schedule_now(schedule=schedule, requested_by=_user(request).email)
            messages.success(request, f"{schedule.agent.name} is running it now.")
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect("agents:task_list")


@login_required
def schedule_pause(request: HttpRequest, pk: int) -> HttpResponse:
    return _schedule_action(request, pk, "pause")


@login_required
def schedule_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _schedule_action(request, pk, "resume")


@login_required
def schedule_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _schedule_action(request, pk, "cancel")


@login_required
def schedule_run(request: HttpRequest, pk: int) -> HttpResponse:
    return _schedule_action(request, pk, "run")
