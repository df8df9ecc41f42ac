"""What each feature adds to its report page: figures derived from its meter events (``register_figures``)
and detail sections from its own stores (``register_detail``); hotcache.reports._summary runs them.
See docs/reports.md#adding-a-features-detail."""

from __future__ import annotations

from collections.abc import Callable

from hotcache.conf import FEATURES
from hotcache.exceptions import HotcacheError
from hotcache.reports._figures import Section

__all__ = ["DetailFunction", "FiguresFunction", "InvalidFilter", "detail_filters", "details_for",
           "figures_for", "filters_of", "register_detail", "register_figures"]

DetailFunction = Callable[..., list[Section]]
FiguresFunction = Callable[..., None]  # fn(summary: FeatureSummary, totals: Counter[str])
_DETAILS: dict[str, list[DetailFunction]] = {}
_DETAIL_FILTERS: dict[DetailFunction, tuple[str, ...]] = {}
_FIGURES: dict[str, FiguresFunction] = {}


class InvalidFilter(HotcacheError, ValueError):
    """A report filter (``?event=``) a detail function cannot use; the page ignores it and says why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _known(feature: str) -> None:
    if feature not in FEATURES:
        msg = f"unknown feature {feature!r}; expected one of {FEATURES}"
        raise ValueError(msg)


def register_figures(feature: str) -> Callable[[FiguresFunction], FiguresFunction]:
    """Decorator: ``fn(summary, totals)`` adds ``feature``'s headline figures (and sections) derived from
    its meter events (``totals``: event -> count over the period). One per feature; no I/O."""
    _known(feature)

    def decorate(fn: FiguresFunction) -> FiguresFunction:
        _FIGURES[feature] = fn
        return fn

    return decorate


def register_detail(feature: str, *, filters: tuple[str, ...] = ()) -> Callable[[DetailFunction], DetailFunction]:
    """Decorator: ``fn(days, **filters) -> [Section, ...]`` adds sections to ``feature``'s report page.

    The function must cost a bounded number of operations (aggregated documents, capped reads) and may
    raise BackendUnavailable, which the page shows as a note on a section titled after the function.
    ``filters`` names the keyword arguments it accepts from the page's query string (strings, unvalidated:
    the function validates them and raises InvalidFilter, after which it is called again without them).
    """
    _known(feature)

    def decorate(fn: DetailFunction) -> DetailFunction:
        if fn not in _DETAILS.setdefault(feature, []):
            _DETAILS[feature].append(fn)
        _DETAIL_FILTERS[fn] = tuple(filters)
        return fn

    return decorate


def detail_filters(feature: str) -> list[str]:
    """The query-string filters ``feature``'s page accepts (from its registered detail functions)."""
    return sorted({name for fn in _DETAILS.get(feature, []) for name in _DETAIL_FILTERS.get(fn, ())})


def figures_for(feature: str) -> FiguresFunction | None:
    """The function that derives ``feature``'s figures from its meter events, if one is registered."""
    return _FIGURES.get(feature)


def details_for(feature: str) -> list[DetailFunction]:
    """``feature``'s detail functions, in registration order."""
    return list(_DETAILS.get(feature, []))


def filters_of(fn: DetailFunction) -> tuple[str, ...]:
    """The query-string filters a detail function declared."""
    return _DETAIL_FILTERS.get(fn, ())
