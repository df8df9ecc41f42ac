"""The hotcache demo (manage.py hotcache_demo): realistic traffic through the real middleware stack."""
