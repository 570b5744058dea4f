"""Request bodies at the public edge (catga_sync.web.bodies): JSON only, strictly, within a
limit."""

from __future__ import annotations

import io

import pytest
from flask import Flask

from catga_sync.errors import CatgaError, RequestBodyError
from catga_sync.web.bodies import MAX_DEPTH, MAX_INT_DIGITS, json_body, parse_json, read_body

APP = Flask("bodies-test")


def _nested(depth: int) -> object:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": [1, 2.5, "x", null, true]}', {"a": [1, 2.5, "x", None, True]}),
        (
            b'"caf\\u00e9 \\ud83d\\ude00"',
            "caf\u00e9 \U0001f600",
        ),  # a surrogate pair is one character
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, _nested(MAX_DEPTH)),
        (b"9" * MAX_INT_DIGITS, int("9" * MAX_INT_DIGITS)),
        (b"-1.5e300", -1.5e300),
    ],
)
def test_what_a_client_means_parses(raw: bytes, value: object) -> None:
    assert parse_json(raw) == value


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"a": 1, "a": 2}', "the key 'a' appears twice in one object"),
        (b'["\\ud800"]', "a string holds a lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "a string holds a lone UTF-16 surrogate"),
        (b'"a\\u0000b"', "a string holds a NUL character"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"it nests deeper than {MAX_DEPTH}"),
        (b"[" * 100_000 + b"]" * 100_000, f"it nests deeper than {MAX_DEPTH}"),
        (b"1" * (MAX_INT_DIGITS + 1), f"an integer of {MAX_INT_DIGITS + 1} digits"),
        (b"1e999", "the number 1e999, too large for a float"),
        (b"NaN", "NaN is not JSON"),
        (b"-Infinity", "-Infinity is not JSON"),
        (b'{"a": \xff}', "it is not UTF-8 (byte 6)"),
        (b"", "it is not valid JSON"),
        (b'{"a": 1', "it is not valid JSON"),
    ],
)
def test_what_a_client_cannot_mean_is_a_400_naming_why(raw: bytes, why: str) -> None:
    with pytest.raises(RequestBodyError) as caught:
        parse_json(raw, shape="an object")
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_json")
    assert str(error).startswith("The body must be an object: ")
    assert why in str(error)
    assert isinstance(error, CatgaError) and isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonx", False),
        (None, False),
    ],
)
def test_a_json_route_takes_json_only(content_type: str | None, accepted: bool) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with APP.test_request_context("/", method="POST", data=b'{"a": 1}', headers=headers):
        if accepted:
            assert json_body(100) == {"a": 1}
        else:
            with pytest.raises(RequestBodyError) as caught:
                json_body(100)
            assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")
            assert f"(got {content_type or 'none'})" in str(caught.value)


def test_a_body_over_the_limit_is_a_413_from_its_length_or_while_reading_a_chunked_one() -> None:
    with APP.test_request_context("/", method="POST", data=b"x" * 101):
        with pytest.raises(RequestBodyError) as caught:
            read_body(100)
        assert (caught.value.status, caught.value.code) == (413, "body_too_large")
        assert str(caught.value) == "The body must be at most 100 bytes."
    environ = {"wsgi.input": io.BytesIO(b"y" * 5000), "wsgi.input_terminated": True}
    with (
        APP.test_request_context("/", method="POST", environ_overrides=environ),
        pytest.raises(RequestBodyError, match="at most 100 bytes"),
    ):
        read_body(100)
    with APP.test_request_context("/", method="POST", data=b"z" * 100):
        assert read_body(100) == b"z" * 100
