from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from knowledge import views as knowledge_views

urlpatterns = [
    path("", account_views.dashboard, name="dashboard"),
    path("", include("accounts.urls")),
    path("servers/", include("channels_app.urls")),
    path("chat/", include("channels_app.chat_urls")),
    path("agents/", include("agents.urls")),
    path("knowledge/", include("knowledge.urls")),
    # The short link agents cite a passage by (knowledge.links): no trailing slash, it is short.
    path("k/<int:document_id>/<int:ordinal>", knowledge_views.passage_link, name="passage_link"),
    path("", include("llms.urls")),
    # Link previews and uploads (chat/previews/, chat/<id>/upload/, uploads/, u/<token>/<name>).
    path("", include("media.urls")),
    path("", include("channels_app.history_urls")),
    path("settings/export/", include("exports.urls")),
    path("admin/", admin.site.urls),
]
