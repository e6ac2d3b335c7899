"""What an account keeps of the links and files in its chat (its own schema):

- LinkPreview: the title, description and image of a web page linked in a line, keyed by its
  address, fetched by a worker (media.tasks.fetch_previews) and kept until `expires_at`; a
  failed fetch is kept too, briefly, so a link posted again is not fetched again at once.
- Upload: a file someone dropped into the chat, stored in the "uploads" storage under
  `<token>/<name>` and served at /u/<token>/<name> to anyone with the link (media.views).
"""

from django.db import models

MAX_URL_LENGTH = 2000


class LinkPreview(models.Model):
    class Status(models.TextChoices):
        OK = "ok"
        FAILED = "failed"

    url = models.CharField(max_length=MAX_URL_LENGTH, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    title = models.CharField(max_length=300, blank=True)
    description = models.CharField(max_length=1000, blank=True)
    site_name = models.CharField(max_length=200, blank=True)
    # The page's image, re-encoded by Pillow (metadata and anything that is not pixels gone),
    # served from Palaver's origin so a viewer never asks the third party for it.
    image = models.BinaryField(null=True, blank=True, editable=False)
    image_type = models.CharField(max_length=30, blank=True)
    image_width = models.PositiveIntegerField(default=0)
    image_height = models.PositiveIntegerField(default=0)
    # Why a failed fetch failed, for the operator (never shown in the chat).
    error = models.CharField(max_length=300, blank=True)
    fetched_at = models.DateTimeField()
    # Indexed: the fetch task deletes previews long expired (media.services.previews).
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["ok", "failed"]), name="linkpreview_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.url

    @property
    def has_image(self) -> bool:
        return bool(self.image_type)


class Upload(models.Model):
    # secrets.token_urlsafe(16): 128 random bits, the only thing that finds the file.
    token = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=120)
    content_type = models.CharField(max_length=100)
    size = models.BigIntegerField()
    # Where the link was sent (the channel may be gone since).
    channel_name = models.CharField(max_length=200, blank=True)
    uploaded_by = models.CharField(max_length=254, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(size__gte=0), name="upload_size_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def storage_name(self) -> str:
        return f"{self.token}/{self.name}"
