from django.urls import path

from channels_app.views import servers as views

app_name = "channels"
urlpatterns = [
    path("", views.server_list, name="server_list"),
    path("new/", views.server_create, name="server_create"),
    path("state/", views.server_states, name="server_states"),
    path("<int:pk>/", views.server_detail, name="server_detail"),
    path("<int:pk>/state/", views.server_state, name="server_state"),
    path("<int:pk>/edit/", views.server_edit, name="server_edit"),
    path("<int:pk>/list/", views.channel_list, name="channel_list"),
    path("<int:pk>/list/refresh/", views.channel_list_refresh, name="channel_list_refresh"),
    path("<int:pk>/list/join/", views.channel_list_join, name="channel_list_join"),
    path("<int:pk>/delete/", views.server_delete, name="server_delete"),
    path("<int:server_pk>/channels/new/", views.channel_create, name="channel_create"),
    path("channels/<int:pk>/edit/", views.channel_edit, name="channel_edit"),
    path("channels/<int:pk>/delete/", views.channel_delete, name="channel_delete"),
]
