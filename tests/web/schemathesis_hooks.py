"""Hooks for the schemathesis run in test_schema.py (loaded through SCHEMATHESIS_HOOKS)."""

from hypothesis import strategies as st
from schemathesis.openapi import format as register_format

from personachat.web.params import EVENT_ID_PATTERN

# schemathesis cannot draw a header value from a pattern that needs ':'; the same pattern, drawn here.
register_format("event-id", st.from_regex(EVENT_ID_PATTERN, fullmatch=True))
