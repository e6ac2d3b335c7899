from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "IRC servers and channels"

    def ready(self) -> None:
        from channels_app import sse

        # Signing out, deactivating a user or changing a password reaches live streams.
        sse.connect_signals()
