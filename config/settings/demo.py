"""The default for manage.py: the base settings in DEBUG, on embedded defaults unless REDIS_URL/MONGO_URL are set."""

from config.settings.base import *  # noqa: F403

DEBUG = True
