"""Helpers shared by the MFA suites."""


def wrong(code):
    """A code of the same length that is not ``code``."""
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"
