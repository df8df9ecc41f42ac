"""The mixed workload of the end-to-end run. Each workload is one kind of client; step() makes one request
(or one small exchange) and returns (status, note). summary() is what the final checks need from it."""

from __future__ import annotations

import random
from typing import Any

from tests.e2e.loadgen import Http


class Workload:
    name = "workload"
    weight = 1.0

    def __init__(self, fixtures: dict[str, Any], shared: dict[str, Any]) -> None:
        self.fixtures = fixtures
        self.shared = shared

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {}


class PageViews(Workload):
    """Anonymous visitors on the home page."""

    name = "pages"

    def step(self, client: Http, rng: random.Random) -> tuple[int, str]:
        status, _, _ = client.request("GET", "/", headers={"X-Forwarded-For": f"203.0.113.{rng.randint(1, 200)}"})
        return status, ""


def build_workloads(fixtures: dict[str, Any], shared: dict[str, Any]) -> list[Workload]:
    return [cls(fixtures, shared) for cls in (PageViews,)]
