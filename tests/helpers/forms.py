"""Post a gateway page's form as a browser would: with the CSRF token the page handed out (and its cookie)."""

from __future__ import annotations

import re

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


def csrf_token(client, page: str, **get) -> str:
    """Return the CSRF token of the form on page; the client keeps the cookie it is bound to."""
    html = client.get(page, **get).get_data(as_text=True)
    return TOKEN.search(html).group(1)


def post_form(client, page: str, action: str, data: dict, **kwargs):
    """GET page for its token, then POST data (token added) to action, as the page's form would."""
    return client.post(action, data={**data, "csrf_token": csrf_token(client, page)}, **kwargs)
