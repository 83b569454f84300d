"""Issue 14: a refusal of the SSRF guard names the setting that would allow what it
refused (the port error once said only "not allowed by the port policy")."""

from __future__ import annotations

import pytest

from aob.workers.http.guard import Blocked, GuardPolicy, check_url


@pytest.mark.parametrize(
    ("url", "setting"),
    [
        ("http://example.com:8899/", "AOB_HTTP_PORTS"),
        ("http://example.com:8899/", "AOB_HTTP_ALLOW=host:port"),
        ("http://127.0.0.1/", "AOB_HTTP_ALLOW"),
        ("http://localhost/", "AOB_HTTP_ALLOW"),
        ("http://example.com/admin/users", "AOB_HTTP_DENY_PATHS"),
    ],
)
def test_each_refusal_names_the_setting_that_allows_it(url: str, setting: str) -> None:
    with pytest.raises(Blocked) as refused:
        check_url(url, GuardPolicy.build())
    assert setting in str(refused.value)
