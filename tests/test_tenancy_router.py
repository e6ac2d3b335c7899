"""The router refuses every ORM read and write of an account model on the public schema, with
a message that says how to activate an account, and lets them through inside an account."""

import pytest
from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models import F

from accounts.models import User
from tenancy import NoTenantError, switch
from tenancy.context import connection

ACCOUNT_MODELS = [
    model
    for label in settings.TENANT_APPS
    for model in apps.get_app_config(label.rsplit(".", 1)[-1]).get_models()
]
HOW_TO_ACTIVATE = (
    r"no account is active\. Wrap the code in `with tenancy\.switch\(user_or_account\):`"
)


def test_every_account_app_has_models_to_check() -> None:
    assert {m._meta.app_label for m in ACCOUNT_MODELS} == {
        "channels_app", "knowledge", "agents", "media", "exports"
    }  # fmt: skip


@pytest.mark.parametrize("model", ACCOUNT_MODELS, ids=lambda m: m._meta.label)
def test_reads_on_public_raise(db: None, model: type[models.Model]) -> None:
    assert connection.schema_name == "public"
    with pytest.raises(NoTenantError, match=HOW_TO_ACTIVATE):
        model._default_manager.first()
    with pytest.raises(NoTenantError, match=model._meta.label):
        model._default_manager.count()
    with pytest.raises(NoTenantError):
        list(model._default_manager.filter(pk=1).values("pk"))


@pytest.mark.parametrize("model", ACCOUNT_MODELS, ids=lambda m: m._meta.label)
def test_writes_on_public_raise(db: None, model: type[models.Model]) -> None:
    with pytest.raises(NoTenantError, match=HOW_TO_ACTIVATE):
        model().save()
    with pytest.raises(NoTenantError):
        field = next(f for f in model._meta.concrete_fields if not f.primary_key)
        model._default_manager.filter(pk=1).update(**{field.attname: F(field.attname)})
    with pytest.raises(NoTenantError):
        model._default_manager.all().delete()
    with pytest.raises(NoTenantError):
        model._default_manager.bulk_create([model()])


@pytest.mark.parametrize("model", ACCOUNT_MODELS, ids=lambda m: m._meta.label)
def test_inside_an_account_the_same_queries_run(alice: User, model: type[models.Model]) -> None:
    with switch(alice):
        assert model._default_manager.count() == 0
        assert model._default_manager.all().delete()[0] == 0
    # And the router refuses again once the switch is over.
    with pytest.raises(NoTenantError):
        model._default_manager.exists()
