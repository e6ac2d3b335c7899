from django.urls import path

from media import views

app_name = "media"
urlpatterns = [
    path("chat/previews/", views.line_previews, name="line_previews"),
    path("chat/previews/<int:pk>/image", views.preview_image, name="preview_image"),
    path("chat/<int:channel_id>/upload/", views.upload, name="upload"),
    path("uploads/", views.upload_list, name="upload_list"),
    path("uploads/<int:pk>/delete/", views.upload_delete, name="upload_delete"),
    # Public: the people in the IRC channel follow it without an account.
    path("u/<str:token>/<str:name>", views.serve_upload, name="serve_upload"),
]
