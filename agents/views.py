from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from accounts.models import User
from agents import services
from agents.forms import AgentForm
from agents.models import Agent
from core.views import back_url, confirm_delete, form_page
from llms.selectors import account_llms


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
    form = AgentForm(request.POST or None, instance=agent, account=user.account)

    def save() -> HttpResponse:
        saved = services.save_agent(account=user.account, form=form)
        return redirect("agents:agent_detail", pk=saved.pk)

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=back_url(agent, "agents:agent_detail", "agents:agent_list"),
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
