from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("sign-up/", views.sign_up, name="sign_up"),
    path("sign-in/", views.sign_in, name="sign_in"),
    path("sign-out/", views.sign_out, name="sign_out"),
    path("password/", views.password_change, name="password_change"),
    path("password/reset/", views.password_reset, name="password_reset"),
    path(
        "password/reset/<uidb64>/<token>/",
        views.PasswordResetConfirm.as_view(),
        name="password_reset_confirm",
    ),
    path("account/", views.account_page, name="account"),
    path("account/delete/", views.account_delete, name="account_delete"),
    path("account/deletion/", views.deletion_pending, name="deletion_pending"),
    path("account/deletion/cancel/", views.deletion_cancel, name="deletion_cancel"),
    path("sessions/", views.session_list, name="session_list"),
    path("sessions/<uuid:public_id>/revoke/", views.session_revoke, name="session_revoke"),
]
