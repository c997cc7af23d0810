"""What Lemmy's database holds is other people's text (names, links from remote instances):
the review page shows it as text, and links only web URLs."""

from __future__ import annotations

from types import SimpleNamespace

from horde_scanner.service.admin.lemmy_page import provenance_html


def test_hostile_names_and_links_are_shown_as_text():
    evil = '<script>alert("x")</script>'
    prov = {
        "state": "resolved",
        "resolved_at": "2026-01-01T00:00:00Z",
        "schema": "0.19.4+",
        "aliases": ["a.webp"],
        "uploads": [
            {
                "kind": "upload",
                "uploaded_at": "2026-01-01T00:00:00Z",
                "uploader": {
                    "name": evil,
                    "actor_url": "javascript:alert(1)",
                    "local": False,
                    "instance": evil,
                },
            }
        ],
        "usages": [
            {
                "kind": "comment",
                "comment_id": 1,
                "url": 'https://evil.example/c/1" onmouseover="alert(1)',
                "creator": {"name": evil, "actor_url": "data:text/html,x", "local": False},
                "community": {"name": evil},
                "origin_instance": "evil.example",
            }
        ],
        "origin_instances": ["evil.example"],
        "notes": [evil],
    }
    svc = SimpleNamespace(provenance=SimpleNamespace(lemmy=object()))
    session = SimpleNamespace(csrf="t")
    page = provenance_html(svc, session, "a" * 64, prov)  # type: ignore[arg-type]
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page and 'href="data:' not in page
    assert 'onmouseover="alert' not in page  # the quote is escaped inside the attribute
    assert "&quot; onmouseover=&quot;alert(1)" in page
