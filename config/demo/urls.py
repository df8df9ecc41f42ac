"""URLconf the demo runs under: the demo views, hotcache's own URLs and the admin."""

from django.contrib import admin
from django.urls import include, path

from config.demo import views

urlpatterns = [
    path("", views.home, name="demo-home"),
    path("me/", views.whoami, name="demo-whoami"),
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    # users
    path("users/me/", views.user_profile, name="demo-user-profile"),
    path("users/me/async/", views.user_profile_async, name="demo-user-profile-async"),
    path("users/rename/", views.user_rename, name="demo-user-rename"),
    path("users/deactivate/", views.user_deactivate, name="demo-user-deactivate"),
    # apikeys
    path("api/usage/", views.api_usage, name="demo-api-usage"),
    path("api/usage-async/", views.api_usage_async, name="demo-api-usage-async"),
    # mfa
    path("mfa/issue/", views.mfa_issue, name="demo-mfa-issue"),
    path("mfa/verify/", views.mfa_verify, name="demo-mfa-verify"),
    # ratelimit
    path("rl/login/", views.ratelimit_login, name="demo-rl-login"),
    path("rl/api/", views.ratelimit_api, name="demo-rl-api"),
    # workbench
    path("workbench/<str:session_id>/", views.workbench_load, name="demo-workbench-load"),
    path("workbench/<str:session_id>/save", views.workbench_save, name="demo-workbench-save"),
    path("workbench/<str:session_id>/edit", views.workbench_edit, name="demo-workbench-edit"),
    path("workbench/<str:session_id>/end", views.workbench_end, name="demo-workbench-end"),
]
