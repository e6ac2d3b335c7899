"""factory_boy factories. Accounts come with their schema, built the way sign-up builds it."""

from typing import TYPE_CHECKING, Any

import factory

from accounts.models import Account, User
from accounts.services import sign_up
from channels_app.models import Channel, Server
from knowledge.models import Document, KnowledgeBase

PASSWORD = "correct horse battery staple"


class UserFactory(factory.Factory[User]):
    class Meta:
        model = User

    if TYPE_CHECKING:
        # factory_boy's metaclass makes calling the factory create a User; its __call__ is
        # untyped, so the type checker would take the call for a UserFactory instance.
        def __new__(cls, **kwargs: Any) -> User:  # type: ignore[misc]
            ...

    email = factory.Sequence(lambda n: f"person{n}@example.org")
    account_name = factory.Sequence(lambda n: f"Account {n}")
    password = PASSWORD

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        return sign_up(**kwargs)

    @classmethod
    def _build(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        raise NotImplementedError("users exist only with an account: use create()")


def account(**kwargs: Any) -> Account:
    return UserFactory(**kwargs).account


class ServerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Server

    name = factory.Sequence(lambda n: f"Network {n}")
    host = "irc.libera.chat"
    port = 6697
    nick = factory.Sequence(lambda n: f"palaver{n}")


class ChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Channel

    server = factory.SubFactory(ServerFactory)
    name = factory.Sequence(lambda n: f"#channel{n}")


class KnowledgeBaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = KnowledgeBase

    name = factory.Sequence(lambda n: f"Handbook {n}")


class DocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Document

    knowledge_base = factory.SubFactory(KnowledgeBaseFactory)
    title = factory.Sequence(lambda n: f"Page {n}")
    source = Document.Source.PASTED
    text = "Palaver keeps your IRC connections open."
