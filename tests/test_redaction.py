"""Secrets stay out of logs, answers and errors: URLs keep scheme, host and path only."""

from __future__ import annotations

import pytest

from function import redaction


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://bucket.example/a/b.jpg?X-Goog-Signature=abc&token=t", "https://bucket.example/a/b.jpg"),
        ("https://user:pw@host.example:8443/p.png#frag", "https://host.example:8443/p.png"),
        ("http://[::1]:81/x?q=1", "http://::1:81/x"),
        ("http://host.example:notaport/x", "<invalid url>"),
        ("/srv/models/birds?v=1", "/srv/models/birds"),
    ],
)
def test_redact_keeps_scheme_host_and_path_only(url, expected):
    assert redaction.redact(url) == expected


def test_scrub_redacts_every_url_in_a_message():
    message = ("404 Client Error: Not Found for url: https://b.example/m.tar.gz?X-Amz-Signature=abc "
               "(tried 'http://u:pw@h.example/x?t=1')")
    assert redaction.scrub(message) == ("404 Client Error: Not Found for url: https://b.example/m.tar.gz "
                                    "(tried 'http://h.example/x')")
