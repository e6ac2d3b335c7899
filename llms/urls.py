from django.urls import path

from llms import views

app_name = "llms"
urlpatterns = [
    path("providers/", views.provider_list, name="provider_list"),
    path("providers/new/", views.provider_create, name="provider_create"),
    path("providers/<uuid:pk>/edit/", views.provider_edit, name="provider_edit"),
    path("providers/<uuid:pk>/delete/", views.provider_delete, name="provider_delete"),
    path("tools/", views.tool_list, name="tool_list"),
    path("tools/<slug:slug>/", views.tool_edit, name="tool_edit"),
]
