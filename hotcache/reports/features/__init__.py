"""Each feature's report page content, one module per feature: the figures it derives from its meter events
and the detail sections it reads from its stores. Importing this package registers them, in FEATURES order.
See docs/reports.md#per-feature-pages."""

from hotcache.reports.features import analytics, apikeys, mfa, ratelimit, sessions, users, workbench  # noqa: F401
