from django.apps import AppConfig


class MediaConfig(AppConfig):
    name = "media"
    verbose_name = "Link previews and uploads"

    def ready(self) -> None:
        from channels_app import hooks
        from core import uploads
        from media import listeners
        from media.services.uploads import delete_files_of_account
        from tenancy.services import account_deleting

        # Every process that stores lines or runs the hook's task knows the listener
        # (channels_app.hooks: registered when Django starts).
        hooks.on_message_stored(listeners.preview_links)
        # A chat upload may be larger than a knowledge document (core.uploads).
        uploads.register_path_limit(r"^/chat/\d+/upload/$", "LIMIT_UPLOAD_BYTES")
        # A deleted account's files are not left behind, still served to whoever has a link.
        account_deleting.connect(delete_files_of_account, dispatch_uid="media-uploads")
