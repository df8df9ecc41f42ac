from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The host project's demo and benchmarks (hotcache_demo, hotcache_bench); not shipped in the wheel."""

    name = "config.demo"
    label = "hotcache_demo"
    verbose_name = "hotcache demo and benchmarks"
