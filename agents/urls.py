from django.urls import path

from agents import views, views_tasks

app_name = "agents"
urlpatterns = [
    path("", views.agent_list, name="agent_list"),
    path("new/", views.agent_create, name="agent_create"),
    path("<int:pk>/", views.agent_detail, name="agent_detail"),
    path("<int:pk>/edit/", views.agent_edit, name="agent_edit"),
    path("<int:pk>/delete/", views.agent_delete, name="agent_delete"),
    path("tasks/<int:pk>/", views.task_detail, name="task_detail"),
    path("usage/", views.usage_page, name="usage"),
    path("tasks/", views_tasks.task_list, name="task_list"),
    path("tasks/schedules/<int:pk>/pause/", views_tasks.schedule_pause, name="schedule_pause"),
    path("tasks/schedules/<int:pk>/resume/", views_tasks.schedule_resume, name="schedule_resume"),
    path("tasks/schedules/<int:pk>/run/", views_tasks.schedule_run, name="schedule_run"),
    path("tasks/schedules/<int:pk>/cancel/", views_tasks.schedule_cancel, name="schedule_cancel"),
]
