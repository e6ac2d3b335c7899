from django.contrib.auth.decorators import login_required
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from accounts.models import User
from agents import services, usage
from agents.forms import AgentForm
from agents.models import Agent, Task
from agents.runs import task_run
from agents.selectors import account_budget, month_start, tokens_used_this_month
from core.views import back_url, confirm_delete, form_page
from llms.selectors import account_llms

# How often a run page that is still queued or running asks for itself again.
RUN_POLL_SECONDS = 2


@login_required
def agent_list(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    agents = Agent.objects.prefetch_related("channels")
    providers = {c.pk: c for c in account_llms(account=user.account)}
    rows = [(agent, providers.get(agent.account_llm_id)) for agent in agents]
    return render(
        request, "agents/agent_list.html", {"rows": rows, "has_providers": bool(providers)}
    )


@login_required
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    agent = get_object_or_404(Agent, pk=pk)
    provider = account_llms(account=user.account).filter(pk=agent.account_llm_id).first()
    used = tokens_used_this_month(agent=agent)
    return render(
        request,
        "agents/agent_detail.html",
        {
            "agent": agent,
            "provider": provider,
            "channels": agent.channels.select_related("server"),
            "knowledge_bases": agent.knowledge_bases.all(),
            "tools": agent.tools.all(),
            "tasks": agent.tasks.all()[:20],
            "month_bar": usage.BudgetBar(used=used, budget=agent.monthly_token_budget),
        },
    )


@login_required
def task_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The run page: what triggered a task, what the model was sent, each call, the answer.
    The runner links a reply cut at its line limit here. While the task is queued or running,
    htmx asks for the page again every few seconds and swaps the run in."""
    task = get_object_or_404(Task.objects.select_related("agent", "channel", "server"), pk=pk)
    context = {"run": task_run(task), "poll_seconds": RUN_POLL_SECONDS}
    if request.headers.get("HX-Request"):
        return render(request, "agents/_task_run.html", context)
    return render(request, "agents/task_detail.html", context)


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    """Tokens per day per agent, this month against the budgets, calls by outcome."""
    user = request.user
    assert isinstance(user, User)
    budget = account_budget(account=user.account)
    used = tokens_used_this_month()
    return render(
        request,
        "agents/usage.html",
        {
            "chart": usage.usage_chart(usage.daily_tokens()),
            "month_start": month_start(),
            "account_bar": usage.BudgetBar(used=used, budget=budget),
            "agents": usage.agent_month_totals(),
            "outcomes": usage.outcome_counts(),
            "failures": usage.recent_failures(),
        },
    )


@login_required
def agent_create(request: HttpRequest) -> HttpResponse:
    return _agent_form(request, Agent(), title="New agent", submit="Create agent")


@login_required
def agent_edit(request: HttpRequest, pk: int) -> HttpResponse:
    agent = get_object_or_404(Agent, pk=pk)
    return _agent_form(request, agent, title=f"Edit {agent}", submit="Save")


def _agent_form(request: HttpRequest, agent: Agent, *, title: str, submit: str) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    form = AgentForm(
        request.POST or None,
        instance=agent,
        account=user.account,
        may_set_budget=user.is_account_admin,
    )

    def save() -> HttpResponse:
        try:
            saved = services.save_agent(account=user.account, form=form)
        except IntegrityError as exc:
            # Another save took the name or nick between the form's check and this one.
            field = form.field_for_violation(exc)
            if field is None:
                raise
            form.add_error(field, form.taken_message(field))
            return render_form()
        return redirect("agents:agent_detail", pk=saved.pk)

    def render_form() -> HttpResponse:
        return form_page(
            request,
            form,
            title=title,
            submit_label=submit,
            cancel_url=back_url(agent, "agents:agent_detail", "agents:agent_list"),
            template_name="agents/agent_form.html",
        )

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=back_url(agent, "agents:agent_detail", "agents:agent_list"),
        template_name="agents/agent_form.html",
    )


@login_required
def agent_delete(request: HttpRequest, pk: int) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    agent = get_object_or_404(Agent, pk=pk)
    return confirm_delete(
        request,
        obj=agent,
        delete=lambda: services.delete_agent(account=user.account, agent=agent),
        cancel_url=reverse("agents:agent_detail", args=[agent.pk]),
        success_url=reverse("agents:agent_list"),
        consequences=[f"{agent.tasks.count()} recorded tasks"],
    )
