"""Django system checks for HOTCACHE, one module per feature; each message names the setting and the fix.

Ids: E001-E009 foundation; E010-E019 rate limiting; E020-E029 cached users; E030-E039 MFA;
E040-E049 API keys; E050-E059 workbench; E060-E069 analytics; E070-E079 reports; E080-E089 the periodic jobs'
schedule; E090-E099 django-ratelimit's settings (rate limiting);
E100-E109 managed Redis (provider requirements, what shares the command budget); E110-E119 sessions;
E120-E129 the Redis target (REDIS_URL, REDIS_CLUSTER); E150-E159 the MongoDB pool (foundation.py).
Wxxx are warnings. The order of hotcache's middleware (middleware_order) takes its ids from the feature concerned:
E022 (cached users), W015 (rate limiting).
Importing this package registers every check (HotcacheConfig.ready does).
"""

from __future__ import annotations

from hotcache.checks._common import number_setting_errors
from hotcache.checks.analytics import check_analytics
from hotcache.checks.apikeys import check_apikeys
from hotcache.checks.foundation import check_foundation
from hotcache.checks.managed_redis import check_managed_redis
from hotcache.checks.mfa import check_mfa
from hotcache.checks.middleware_order import check_middleware_order
from hotcache.checks.ratelimit import check_django_ratelimit_settings, check_ratelimit
from hotcache.checks.redis_target import check_celery_broker_on_cluster, check_cluster_mode, check_redis_target
from hotcache.checks.reports import check_reports
from hotcache.checks.schedule import check_schedule
from hotcache.checks.sessions import check_sessions
from hotcache.checks.users import check_users
from hotcache.checks.workbench import check_workbench

__all__ = [
    "check_analytics",
    "check_apikeys",
    "check_celery_broker_on_cluster",
    "check_cluster_mode",
    "check_django_ratelimit_settings",
    "check_foundation",
    "check_managed_redis",
    "check_mfa",
    "check_middleware_order",
    "check_ratelimit",
    "check_redis_target",
    "check_reports",
    "check_schedule",
    "check_sessions",
    "check_users",
    "check_workbench",
    "number_setting_errors",
]
