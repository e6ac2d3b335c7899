from django.urls import path

from channels_app import history_views

app_name = "history"
urlpatterns = [
    path("search/", history_views.search, name="search"),
    path("notifications/", history_views.notification_list, name="notifications"),
    path("notifications/<int:pk>/read/", history_views.notification_read, name="notification_read"),
    path(
        "notifications/read-all/",
        history_views.notification_read_all,
        name="notification_read_all",
    ),
    path("notifications/badge/", history_views.notification_badge, name="notification_badge"),
    path("settings/chat/", history_views.chat_settings, name="chat_settings"),
]
