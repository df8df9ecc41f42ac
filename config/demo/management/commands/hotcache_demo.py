"""manage.py hotcache_demo: drive realistic traffic through the real stack and report what hotcache did.

It runs only under its own settings (config.settings.demo_isolated): started under any other, it runs itself
again in a subprocess under those (config/demo/isolation.py says why). Exit status 0 when the run passed,
1 when any request failed that should not have, with the failures listed in the report.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from config.demo import isolation
from config.demo.report import format_report
from config.demo.runner import Scenario, run_demo

DEFAULT_SCENARIOS = "config.demo.scenarios.all_scenarios"


class Command(BaseCommand):
    help = (
        "Run the hotcache demo: many users, IPs and API keys through Django's WSGI handler, then the syncs, "
        "then a report (Redis commands per 1,000 requests, MongoDB operations saved, what each feature did) "
        "ending with a PASS/FAIL verdict. Runs under its own settings (config.settings.demo_isolated: a "
        "throwaway in-memory database); writes only under Redis key prefix 'hcdemo' and MongoDB database "
        "'hotcache_demo'. Exits 1 when requests failed that should not have."
    )
    # The parent only starts the isolated run; the isolated run checks under its own settings (handle()).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--requests", type=int, default=2000, help="number of HTTP requests (default 2000)")
        parser.add_argument("--seed", type=int, default=1, help="random seed for the traffic mix")
        parser.add_argument("--json", action="store_true", help="print the report as JSON (keys: docs/demo.md)")
        parser.add_argument(
            "--scenarios",
            default=DEFAULT_SCENARIOS,
            help=f"dotted path of a callable returning the scenarios to run (default {DEFAULT_SCENARIOS}); "
            "to extend the demo, or to check that a failing scenario fails the run",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["requests"]
        if n < 1:
            raise CommandError("--requests must be at least 1")
        if not isolation.is_isolated():
            self._run_isolated(options)
            return
        self.check(display_num_errors=False)
        scenarios = _load_scenarios(options["scenarios"])
        call_command("migrate", verbosity=0, interactive=False)  # the throwaway database this process created

        with _progress_bar(n) as progress:
            result = run_demo(scenarios, requests=n, seed=options["seed"], progress=progress)
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            self.stdout.write(format_report(result), ending="")
        if not result.passed:
            raise CommandError(result.verdict, returncode=1)

    def _run_isolated(self, options: dict[str, Any]) -> None:
        args = [
            "--requests",
            str(options["requests"]),
            "--seed",
            str(options["seed"]),
            "--scenarios",
            options["scenarios"],
        ]
        if options["json"]:
            args.append("--json")
        self.stdout.flush()
        self.stderr.flush()
        code = isolation.run_isolated(
            args,
            stdout=None if _is_process_stream(self.stdout, sys.stdout) else self.stdout,
            stderr=None if _is_process_stream(self.stderr, sys.stderr) else self.stderr,
        )
        if code:
            # The isolated run printed its report, failures and verdict; pass its status on.
            raise SystemExit(code)


def _is_process_stream(wrapper: Any, stream: Any) -> bool:
    return getattr(wrapper, "_out", wrapper) is stream and hasattr(stream, "fileno")


def _load_scenarios(path: str) -> list[Scenario]:
    try:
        factory: Callable[[], list[Scenario]] = import_string(path)
    except ImportError as exc:
        raise CommandError(f"--scenarios {path!r}: {exc}") from exc
    return list(factory())


class _progress_bar:
    """A tqdm bar on stderr when stderr is a terminal; nothing otherwise (logs, pipes, CI)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="req", desc="hotcache demo", file=sys.stderr, leave=False)

        def progress(done: int, total: int) -> None:
            self.bar.update(done - self.bar.n)

        return progress

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
