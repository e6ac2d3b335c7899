from django.urls import path

from agents import views

app_name = "agents"
urlpatterns = [
    path("", views.agent_list, name="agent_list"),
    path("new/", views.agent_create, name="agent_create"),
    path("<int:pk>/", views.agent_detail, name="agent_detail"),
    path("<int:pk>/edit/", views.agent_edit, name="agent_edit"),
    path("<int:pk>/delete/", views.agent_delete, name="agent_delete"),
    path("tasks/<int:pk>/", views.task_detail, name="task_detail"),
    path("usage/", views.usage_page, name="usage"),
]
