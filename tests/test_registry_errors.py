"""registry/errors.py: the table of API errors and the LXD/AMS envelopes."""
import json
import re

import pytest

from registry.errors import ERRORS, ApiError, envelope_error, envelope_sync

EXPECTED_STATUS = {
    "bad_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "length_required": 411,
    "too_large": 413,
    "range_not_satisfiable": 416,
    "digest_mismatch": 422,
    "size_mismatch": 422,
    "too_many_requests": 429,
    "internal": 500,
    "unavailable": 503,
    "insufficient_storage": 507,
}


def test_table_has_every_api_error_with_its_status():
    assert {code: status for code, (status, _) in ERRORS.items()} == EXPECTED_STATUS


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_codes_are_snake_case_with_a_one_line_default_message(code):
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code)
    message = ERRORS[code][1]
    assert message and "\n" not in message


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_of_uses_the_table(code):
    err = ApiError.of(code)
    assert isinstance(err, Exception)
    assert (err.status, err.code, err.message) == (ERRORS[code][0], code, ERRORS[code][1])
    assert str(err) == err.message


def test_specific_message_replaces_the_default():
    err = ApiError.of("not_found", "application 'x' not found")
    assert err.status == 404
    assert err.code == "not_found"
    assert err.message == "application 'x' not found"
    assert str(err) == "application 'x' not found"
    assert "not_found" in repr(err)


def test_unknown_code_is_a_programming_error():
    with pytest.raises(ValueError, match="no_such_code"):
        ApiError.of("no_such_code")


def test_can_be_raised_and_caught():
    with pytest.raises(ApiError) as info:
        raise ApiError.of("conflict", "game 1 amd64 is already published")
    assert info.value.status == 409


def test_error_envelope():
    body = envelope_error(ApiError.of("forbidden", "publisher role required"))
    assert body == {"type": "error", "error": "publisher role required", "error_code": 403}
    assert json.loads(json.dumps(body)) == body


def test_sync_envelope():
    assert envelope_sync({"status": "ok"}) == {
        "type": "sync", "status": "Success", "status_code": 200,
        "metadata": {"status": "ok"}}
    created = envelope_sync([], status=201)
    assert created["status_code"] == 201
    assert created["metadata"] == []
    assert envelope_sync(None)["metadata"] is None
