"""What a code is: validated names, a new random code, a typed code's shape, its digest and record signature.

At rest there is only HMAC-SHA256(k, purpose NUL user NUL code), k derived from SECRET_KEY; see docs/mfa.md.
"""

from __future__ import annotations

import re
import secrets

from django.utils.crypto import salted_hmac

from hotcache import keys, signing
from hotcache.exceptions import InvalidName

__all__ = ["CODE_SIGNING", "digest", "doc_id", "new_code", "record_signature", "typed_code", "validate"]

_PURPOSE_PATTERN = r"[A-Za-z0-9_.\-]{1,32}"
_MAX_CODE_LENGTH = 64  # characters of a typed code looked at; anything longer cannot be a code
CODE_SIGNING = "mfa.code"  # the hotcache.signing purpose of a code record (identity: its user and purpose)


def validate(user_id: object, purpose: object) -> tuple[str, str]:
    """(user, purpose) as key-safe text; InvalidName naming the field otherwise."""
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        if user_id.bit_length() > 512:  # longer than any valid name, and str() refuses the longest ints
            msg = "user_id is an int too large to be a user id"
            raise InvalidName(msg)
        user_id = str(user_id)
    user = keys.validate_name(user_id, what="user_id")
    return user, keys.validate_name(purpose, what="purpose", pattern=_PURPOSE_PATTERN)


def new_code(digits: int, *, unlike: str | None = None) -> str:
    """A random code of ``digits`` digits from ``secrets``; never ``unlike`` when given."""
    while True:
        code = f"{secrets.randbelow(10**digits):0{digits}d}"
        if code != unlike:
            return code


def typed_code(code: object, digits: int) -> str | None:
    """The code as typed, whitespace removed ("123 456" from an SMS), or None when it cannot be a code."""
    if not isinstance(code, str) or len(code) > _MAX_CODE_LENGTH:
        return None
    code = "".join(code.split())
    if not re.fullmatch(rf"[0-9]{{{digits}}}", code):
        return None  # not exactly `digits` ASCII digits (str.isdigit() would accept other scripts)
    return code


def digest(user: str, purpose: str, code: str) -> str:
    # NUL separators: validated names cannot contain NUL, so (purpose, user, code) maps to one message.
    message = f"{purpose}\x00{user}\x00{code}"
    return salted_hmac("hotcache.mfa", message, algorithm="sha256").hexdigest()


def doc_id(user: str, purpose: str) -> str:
    """The MongoDB _id of a user's code for a purpose, also the identity its record is signed for."""
    return f"{purpose}|{user}"  # '|' is allowed in neither part, so the id is unambiguous


def record_signature(user: str, purpose: str, code_digest: str, issued_at_ms: int | str) -> str:
    """The signature a code record carries: its digest and issue time, bound to its user and purpose."""
    return signing.signature(CODE_SIGNING, doc_id(user, purpose), f"{code_digest}|{issued_at_ms}")
