from django.urls import path

from knowledge import views

app_name = "knowledge"
urlpatterns = [
    path("", views.kb_list, name="kb_list"),
    path("new/", views.kb_create, name="kb_create"),
    path("<int:pk>/", views.kb_detail, name="kb_detail"),
    path("<int:pk>/edit/", views.kb_edit, name="kb_edit"),
    path("<int:pk>/delete/", views.kb_delete, name="kb_delete"),
    path("<int:pk>/documents/", views.kb_documents, name="kb_documents"),
    path("<int:pk>/reindex/", views.kb_reindex, name="kb_reindex"),
    path("<int:pk>/search/", views.kb_search, name="kb_search"),
    path("<int:kb_pk>/documents/new/", views.document_create, name="document_create"),
    path("documents/<int:pk>/", views.document_detail, name="document_detail"),
    path("documents/<int:pk>/delete/", views.document_delete, name="document_delete"),
    path("documents/<int:pk>/reindex/", views.document_reindex, name="document_reindex"),
]
