from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.debug import sensitive_post_parameters

from accounts.models import Account, User
from core.views import confirm_delete, form_page
from llms import selectors, services
from llms.forms import AccountLLMForm, ToolSettingsForm
from llms.models import AccountLLM
from llms.tools import TOOLS_BY_SLUG


def _account(request: HttpRequest) -> Account:
    user = request.user
    assert isinstance(user, User)
    return user.account


@login_required
def provider_list(request: HttpRequest) -> HttpResponse:
    configs = selectors.account_llms(account=_account(request))
    return render(request, "llms/provider_list.html", {"configs": configs})


@login_required
@sensitive_post_parameters("api_key")
def provider_create(request: HttpRequest) -> HttpResponse:
    return _provider_form(request, AccountLLM(), title="Add an LLM provider", submit="Add")


@login_required
@sensitive_post_parameters("api_key")
def provider_edit(request: HttpRequest, pk: str) -> HttpResponse:
    config = selectors.account_llm_or_404(account=_account(request), pk=pk)
    return _provider_form(request, config, title=f"Edit {config.llm}", submit="Save")


def _provider_form(
    request: HttpRequest, config: AccountLLM, *, title: str, submit: str
) -> HttpResponse:
    account = _account(request)
    form = AccountLLMForm(request.POST or None, instance=config, account=account)

    def save() -> HttpResponse:
        services.save_account_llm(
            account=account,
            llm=form.cleaned_data["llm"],
            api_key=form.secret_changes().get("api_key", ""),
            enabled_models=form.cleaned_data["enabled_models"],
            default_model=form.cleaned_data["default_model"],
            instance=config if config.pk else None,
        )
        messages.success(request, "Provider saved.")
        return redirect("llms:provider_list")

    return form_page(
        request,
        form,
        on_valid=save,
        title=title,
        submit_label=submit,
        cancel_url=reverse("llms:provider_list"),
        intro="Your API key is encrypted at rest and never shown again, not even to you.",
    )


@login_required
def provider_delete(request: HttpRequest, pk: str) -> HttpResponse:
    account = _account(request)
    config = selectors.account_llm_or_404(account=account, pk=pk)
    return confirm_delete(
        request,
        obj=config,
        delete=lambda: services.delete_account_llm(account=account, config=config),
        cancel_url=reverse("llms:provider_list"),
        success_url=reverse("llms:provider_list"),
        consequences=["the stored API key"],
        error_types=(services.ProviderInUseError,),
    )


@login_required
def tool_list(request: HttpRequest) -> HttpResponse:
    account = _account(request)
    configs = {c.tool_id: c for c in selectors.account_tools(account=account)}
    rows = []
    for tool in selectors.tool_catalog():
        config = configs.get(tool.pk)
        spec = TOOLS_BY_SLUG.get(tool.slug)
        values = {**spec.default_settings(), **(config.settings if config else {})} if spec else {}
        # What each setting is now, in words: defaults until the account saves its own.
        summary = (
            [(s.label, s.display(values.get(s.name, s.default))) for s in spec.settings]
            if spec
            else []
        )
        # A knowledge tool is not switched on: agents with a knowledge base have it.
        rows.append((tool, config, summary, bool(spec and spec.for_knowledge_bases)))
    return render(request, "llms/tool_list.html", {"rows": rows})


@login_required
def tool_edit(request: HttpRequest, slug: str) -> HttpResponse:
    account = _account(request)
    tool = get_object_or_404(selectors.tool_catalog(), slug=slug)
    spec = TOOLS_BY_SLUG.get(tool.slug)
    if spec is None:
        raise Http404("No such tool")
    config = selectors.tool_config(account=account, tool=tool)
    current = config.settings if config else spec.default_settings()
    form = ToolSettingsForm(
        request.POST or None,
        spec=spec,
        current=current,
        initial={"enabled": config.enabled if config else False},
    )

    def save() -> HttpResponse:
        services.configure_tool(
            account=account,
            tool=tool,
            enabled=form.cleaned_data.get("enabled", False),
            settings=form.settings_values(),
        )
        messages.success(request, f"{tool.name} saved.")
        return redirect("llms:tool_list")

    return form_page(
        request,
        form,
        on_valid=save,
        title=tool.name,
        intro=tool.description
        + (" Every agent given a knowledge base has it." if spec.for_knowledge_bases else ""),
        submit_label="Save",
        cancel_url=reverse("llms:tool_list"),
    )
