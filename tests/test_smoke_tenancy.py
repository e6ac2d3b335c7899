import pytest

from channels_app.models import Server
from tenancy import NoTenantError, switch


def test_tenant_switch_scopes_queries(alice, bob):
    with switch(alice):
        Server.objects.create(name="Libera", host="irc.libera.chat", nick="alice")
    with switch(bob):
        Server.objects.create(name="EFnet", host="irc.efnet.org", nick="bob")
    with switch(alice):
        assert list(Server.objects.values_list("host", flat=True)) == ["irc.libera.chat"]
    with switch(bob):
        assert list(Server.objects.values_list("host", flat=True)) == ["irc.efnet.org"]


def test_no_tenant_error(db):
    with pytest.raises(NoTenantError, match="tenancy.switch"):
        Server.objects.count()
