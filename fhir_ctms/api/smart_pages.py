"""The authorization server's HTML: the login page, the consent page (with a patient picker for
standalone launches) and the error page. Plain server-rendered forms, no script; every value
is escaped; each form carries the signed ticket and the CSRF token."""

from __future__ import annotations

from html import escape

_STYLE = """body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}
label{display:block;margin:.8rem 0 .2rem}input,select{width:100%;padding:.4rem;box-sizing:border-box}
button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.error{color:#a00}code{background:#eee;padding:0 .2rem}
li{margin:.2rem 0}"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style>'
            f'</head><body><h1>{escape(title)}</h1>{body}</body></html>')


def _hidden(ticket: str, csrf: str) -> str:
    return (f'<input type="hidden" name="ticket" value="{escape(ticket)}">'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">')


def login(action: str, ticket: str, csrf: str, client_id: str, error: str | None = None) -> str:
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("Sign in to fhir-ctms", (
        f"<p>The application <code>{escape(client_id)}</code> asks to use your fhir-ctms data.</p>{err}"
        f'<form method="post" action="{escape(action)}">{_hidden(ticket, csrf)}'
        '<label for="username">Username</label>'
        '<input id="username" name="username" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required>'
        '<button type="submit" id="sign-in">Sign in</button></form>'))


def consent(action: str, ticket: str, csrf: str, client_id: str, username: str, scopes: list[str],
            picker: tuple[str, ...] | None, error: str | None = None) -> str:
    """``picker``: None when no patient is to be chosen; the user's patients (empty: any id)."""
    err = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    items = "".join(f"<li><code>{escape(s)}</code></li>" for s in scopes) or "<li>(no data access)</li>"
    choose = ""
    if picker is not None:
        if picker:
            options = "".join(f'<option value="{escape(p)}">Patient/{escape(p)}</option>' for p in picker)
            choose = f'<label for="patient">Patient</label><select id="patient" name="patient">{options}</select>'
        else:
            choose = ('<label for="patient">Patient id</label>'
                      '<input id="patient" name="patient" required placeholder="e.g. pat-001">')
    return _page("Allow access?", (
        f"<p>Signed in as <strong>{escape(username)}</strong>.</p>{err}"
        f"<p>The application <code>{escape(client_id)}</code> asks for:</p><ul>{items}</ul>"
        f'<form method="post" action="{escape(action)}">{_hidden(ticket, csrf)}{choose}'
        '<button type="submit" name="decision" value="allow" id="allow">Allow</button>'
        '<button type="submit" name="decision" value="deny" id="deny">Deny</button></form>'))


def error(message: str) -> str:
    return _page("Authorization failed", f'<p class="error" role="alert">{escape(message)}</p>')
