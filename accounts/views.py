import logging
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_POST

from accounts import selectors, services, throttle
from accounts.forms import DeleteAccountForm, PasswordResetRequestForm, SignInForm, SignUpForm
from accounts.models import Account, User
from accounts.throttle import client_address, describe_wait
from agents.models import Agent
from channels_app.models import Channel, Server
from channels_app.selectors.notifications import notification_context, unread_notifications
from knowledge.models import KnowledgeBase
from llms.selectors import account_llms, enabled_tools
from tenancy.provisioning import ProvisioningError
from tenancy.services import AccountDeletionError, cancel_account_deletion, request_account_deletion

logger = logging.getLogger(__name__)


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)
    return user


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    totals = selectors.count_many(
        servers=Server.objects.all(),
        channels=Channel.objects.filter(kind=Channel.Kind.CHANNEL),
        agents=Agent.objects.all(),
        knowledge_bases=KnowledgeBase.objects.all(),
        llms=account_llms(account=user.account),
        tools=enabled_tools(account=user.account),
        unread=unread_notifications(),
    )
    server_list = reverse("channels:server_list")
    counts = [
        ("Servers", totals["servers"], server_list),
        ("Channels", totals["channels"], server_list),
        ("Agents", totals["agents"], reverse("agents:agent_list")),
        ("Knowledge bases", totals["knowledge_bases"], reverse("knowledge:kb_list")),
        ("LLM providers", totals["llms"], reverse("llms:provider_list")),
        ("Tools enabled", totals["tools"], reverse("llms:tool_list")),
    ]
    unread_count = totals["unread"]
    servers = list(Server.objects.all()[:10]) if totals["servers"] else []
    unread = [notification_context(n) for n in unread_notifications()[:5]] if unread_count else []
    return render(
        request,
        "accounts/dashboard.html",
        {
            "counts": counts,
            "servers": servers,
            "unread_notifications": unread,
            "unread_count": unread_count,
        },
    )


def sign_up(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        wait = services.count_sign_up(client=client_address(request))
        if wait:
            form.add_error(
                None, f"Too many sign-ups from your address. Try again in {describe_wait(wait)}."
            )
            return render(request, "accounts/sign_up.html", {"form": form}, status=429)
        try:
            user = services.sign_up(
                account_name=form.cleaned_data["account_name"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
            )
        except services.EmailTakenError:
            form.add_error("email", "An account already uses this email address.")
        except services.AccountNameTakenError:
            form.add_error("account_name", "That account name is taken.")
        except (DatabaseError, ProvisioningError):
            # Everything ran in one transaction: nothing of the account remains.
            logger.exception("sign-up failed while creating the account's schema")
            form.add_error(
                None,
                "We could not create your account just now, and nothing was saved. "
                "Please try again in a minute.",
            )
            return render(request, "accounts/sign_up.html", {"form": form}, status=503)
        else:
            login(request, user, backend="accounts.backends.EmailBackend")
            messages.success(
                request, f"Welcome to Palaver. Your account “{user.account}” is ready."
            )
            return redirect("dashboard")
    status = 400 if form.is_bound else 200
    return render(request, "accounts/sign_up.html", {"form": form}, status=status)


GENERIC_SIGN_IN_ERROR = "That email and password do not match an account."


@sensitive_post_parameters("password")
def sign_in(request: HttpRequest) -> HttpResponse:
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, request.is_secure()):
        next_url = ""
    if request.user.is_authenticated:
        return redirect(next_url or "dashboard")
    form = SignInForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        result = services.check_credentials(
            request=request,
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password"],
            client=client_address(request),
        )
        if result.user is not None:
            # login() rotates the session key, so a key planted before sign-in is worthless.
            login(request, result.user, backend="accounts.backends.EmailBackend")
            return HttpResponseRedirect(next_url or reverse("dashboard"))
        if result.throttled:
            form.add_error(None, services.throttled_message(result.retry_after_seconds))
            status = 429
        else:
            form.add_error(None, GENERIC_SIGN_IN_ERROR)
            status = 400
    elif form.is_bound:
        status = 400
    return render(request, "accounts/sign_in.html", {"form": form, "next": next_url}, status=status)


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("accounts:sign_in")


@login_required
def session_list(request: HttpRequest) -> HttpResponse:
    sessions = list(selectors.active_sessions(user=_user(request)))
    current_id = next(
        (s.public_id for s in sessions if s.session_key == request.session.session_key), None
    )
    return render(
        request, "accounts/session_list.html", {"sessions": sessions, "current_id": current_id}
    )


@login_required
@require_POST
def session_revoke(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    revoked = services.revoke_session(user=_user(request), public_id=public_id)
    if revoked is None:
        raise Http404("No such session")
    if revoked == request.session.session_key:
        logout(request)
        return redirect("accounts:sign_in")
    if request.headers.get("HX-Request"):
        return HttpResponse("")  # htmx removes the row in place
    messages.success(request, "Session signed out.")
    return redirect("accounts:session_list")


@login_required
@sensitive_post_parameters("old_password", "new_password1", "new_password2")
def password_change(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = PasswordChangeForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        services.set_password(
            user=user,
            new_password=form.cleaned_data["new_password1"],
            keep_session_key=request.session.session_key,
        )
        # Keeps this browser signed in under the new password's session hash.
        update_session_auth_hash(request, user)
        messages.success(request, "Password changed. Every other session is signed out.")
        return redirect("accounts:session_list")
    return render(
        request,
        "accounts/password_form.html",
        {
            "form": form,
            "title": "Change your password",
            "intro": "Every other browser signed in as you will be signed out.",
            "submit_label": "Change password",
            "cancel_url": reverse("accounts:session_list"),
        },
        status=400 if form.is_bound else 200,
    )


def password_reset(request: HttpRequest) -> HttpResponse:
    form = PasswordResetRequestForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        wait = services.request_password_reset(
            email=form.cleaned_data["email"],
            client=client_address(request),
            site_url=request.build_absolute_uri("/"),
        )
        if not wait:
            return render(
                request,
                "accounts/password_form.html",
                {
                    "title": "Check your email",
                    "intro": (
                        f"If an account uses {form.cleaned_data['email']}, we have sent a link "
                        f"to it. The link works once, within "
                        f"{describe_wait(settings.PASSWORD_RESET_TIMEOUT)}."
                    ),
                },
            )
        form.add_error(
            None, f"Too many reset requests from your address. Try again in {describe_wait(wait)}."
        )
        status = 429
    else:
        status = 400 if form.is_bound else 200
    return render(
        request,
        "accounts/password_form.html",
        {
            "form": form,
            "title": "Reset your password",
            "intro": "We will email you a link to choose a new password.",
            "submit_label": "Email me a link",
            "cancel_url": reverse("accounts:sign_in"),
        },
        status=status,
    )


@method_decorator(sensitive_post_parameters("new_password1", "new_password2"), name="dispatch")
class PasswordResetConfirm(auth_views.PasswordResetConfirmView):
    """Django's reset-link view (it moves the token out of the URL into the session before
    showing the form, so it cannot leak through Referer), with our write: a reset ends every
    session of the user."""

    template_name = "accounts/password_form.html"
    post_reset_login = False
    extra_context = {
        "title": "Choose a new password",
        "submit_label": "Set password",
    }

    def form_valid(self, form: SetPasswordForm) -> HttpResponse:
        services.set_password(
            user=form.user, new_password=form.cleaned_data["new_password1"], keep_session_key=None
        )
        del self.request.session[auth_views.INTERNAL_RESET_SESSION_TOKEN]
        messages.success(self.request, "Password changed. Sign in with your new password.")
        return HttpResponseRedirect(reverse("accounts:sign_in"))


# --- the account page and its deletion -----------------------------------------------------------


def _account_page(
    request: HttpRequest, form: DeleteAccountForm | None, status: int
) -> HttpResponse:
    user = _user(request)
    return render(
        request,
        "accounts/account.html",
        {
            "account": user.account,
            "delete_form": form,
            "grace_days": settings.ACCOUNT_DELETION_GRACE_DAYS,
        },
        status=status,
    )


@login_required
def account_page(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = DeleteAccountForm(user=user) if user.is_account_admin else None
    return _account_page(request, form, 200)


def _delete_attempts_key(user: User) -> str:
    return f"account-delete:user:{user.pk}"


@login_required
@require_POST
@sensitive_post_parameters("password")
def account_delete(request: HttpRequest) -> HttpResponse:
    """An account admin asks for the account's deletion: the purge comes after the grace
    period; every session (this one too) ends now."""
    user = _user(request)
    if not user.is_account_admin:
        raise PermissionDenied("Only an account admin can delete the account.")
    form = DeleteAccountForm(request.POST, user=user)
    # Counted before the password is checked, as sign-in does: a stolen session must not get
    # unlimited guesses at the password through this form.
    wait = throttle.over_limit(
        _delete_attempts_key(user),
        limit=settings.SIGN_IN_MAX_FAILURES_PER_EMAIL_AND_CLIENT,
        window_seconds=settings.SIGN_IN_WINDOW_SECONDS,
    )
    if wait:
        form.is_valid()
        form.add_error(None, f"Too many attempts. Try again in {describe_wait(wait)}.")
        return _account_page(request, form, 429)
    if not form.is_valid():
        return _account_page(request, form, 400)
    throttle.reset(_delete_attempts_key(user))
    try:
        account = request_account_deletion(account=user.account, actor=user)
    except AccountDeletionError as exc:
        form.add_error(None, str(exc))
        return _account_page(request, form, 409)
    logout(request)
    messages.info(
        request,
        f"Account “{account.name}” will be deleted on {account.purge_after:%-d %B %Y}. "
        "Until then an admin of the account can sign in and cancel.",
    )
    return redirect("accounts:sign_in")


def _pending_account(request: HttpRequest) -> Account:
    account = _user(request).account
    if not account.pending_deletion:
        raise Http404("This account is not scheduled for deletion")
    return account


@login_required
def deletion_pending(request: HttpRequest) -> HttpResponse:
    """The one page of an account pending deletion (accounts.middleware.PendingDeletionMiddleware
    sends its users here)."""
    account = _pending_account(request)
    return render(
        request,
        "accounts/deletion_pending.html",
        {"account": account, "admins": selectors.account_admin_emails(account=account)},
    )


@login_required
@require_POST
def deletion_cancel(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    account = _pending_account(request)
    if not user.is_account_admin:
        raise PermissionDenied("Only an account admin can cancel the deletion.")
    try:
        cancel_account_deletion(account=account, actor=user)
    except AccountDeletionError as exc:  # cancelled or purged meanwhile
        raise Http404(str(exc)) from exc
    messages.success(request, f"The deletion of “{account.name}” is cancelled. Welcome back.")
    return redirect("dashboard")
