from django.urls import path

from channels_app import sse
from channels_app.views import chat as chat_views

app_name = "chat"
urlpatterns = [
    path("", chat_views.index, name="index"),
    path("events/", sse.stream, name="events"),
    path("sidebar/", chat_views.sidebar, name="sidebar"),
    path("<int:channel_id>/", chat_views.channel_page, name="channel"),
    path("<int:channel_id>/history/", chat_views.history, name="history"),
    path("<int:channel_id>/lines/", chat_views.lines_after, name="lines"),
    path("<int:channel_id>/info/", chat_views.channel_info, name="info"),
    path("<int:channel_id>/send/", chat_views.send, name="send"),
    path("<int:channel_id>/read/", chat_views.read, name="read"),
]
