"""URLconf the demo runs under: the demo views, hotcache's own URLs and the admin."""

from django.contrib import admin
from django.urls import include, path

from hotcache.demo import views

urlpatterns = [
    path("", views.home, name="demo-home"),
    path("me/", views.whoami, name="demo-whoami"),
    path("admin/", admin.site.urls),
    path("hotcache/", include("hotcache.urls")),
    # workbench
    path("workbench/<str:session_id>/", views.workbench_load, name="demo-workbench-load"),
    path("workbench/<str:session_id>/save", views.workbench_save, name="demo-workbench-save"),
    path("workbench/<str:session_id>/edit", views.workbench_edit, name="demo-workbench-edit"),
    path("workbench/<str:session_id>/end", views.workbench_end, name="demo-workbench-end"),
]
