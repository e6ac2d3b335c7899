from django.urls import path

from channels_app.views import notifications, search, settings

app_name = "history"
urlpatterns = [
    path("search/", search.search, name="search"),
    path("notifications/", notifications.notification_list, name="notifications"),
    path("notifications/<int:pk>/read/", notifications.notification_read, name="notification_read"),
    path(
        "notifications/read-all/",
        notifications.notification_read_all,
        name="notification_read_all",
    ),
    path("notifications/badge/", notifications.notification_badge, name="notification_badge"),
    path("settings/chat/", settings.chat_settings, name="chat_settings"),
]
