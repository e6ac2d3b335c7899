from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views

urlpatterns = [
    path("", account_views.dashboard, name="dashboard"),
    path("", include("accounts.urls")),
    path("servers/", include("channels_app.urls")),
    path("chat/", include("channels_app.chat_urls")),
    path("agents/", include("agents.urls")),
    path("knowledge/", include("knowledge.urls")),
    path("", include("llms.urls")),
    path("", include("channels_app.history_urls")),
    path("admin/", admin.site.urls),
]
