"""The web console (issue 15) in a real browser: Debian's Chromium driven by Playwright.

Run by tests/console.rs, which starts the real binary and passes, in the environment:
  CONSOLE_BASE         http://127.0.0.1:PORT of the server
  CONSOLE_ALICE_TOKEN  a user's token; CONSOLE_ROOT_TOKEN an admin's token
  CONSOLE_SHOTS        directory for the screenshots
  CONSOLE_SECRETS      JSON {name: value}: the secrets to type (random, checked everywhere)
  CONSOLE_SSH_KEY      path of an unencrypted private key (the ssh form's multiline secret)
  CONSOLE_CSP          the exact Content-Security-Policy of /ui/
  CONSOLE_CHROMIUM     the browser binary (/usr/bin/chromium)

Each section runs on its own; a failing section is reported (what, where, what was seen)
and the others still run. Nothing printed contains a secret: every line goes through
`say`, which replaces any secret (raw or base64) by its name. Exit status 0 only when
every check passed; the last line is then "console test: all checks passed".
"""

import base64
import json
import os
import re
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_BASE"].rstrip("/")
ALICE = os.environ["CONSOLE_ALICE_TOKEN"]
ROOT = os.environ["CONSOLE_ROOT_TOKEN"]
SHOTS = os.environ["CONSOLE_SHOTS"]
SECRETS = json.loads(os.environ["CONSOLE_SECRETS"])
CSP = os.environ["CONSOLE_CSP"]
CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")
with open(os.environ["CONSOLE_SSH_KEY"]) as f:
    SSH_KEY = f.read()

UI = BASE + "/ui/"
BUILTINS = ["alpaca", "ssh", "bearer_token", "db_dsn", "http_basic", "api_key"]
STARTED = time.monotonic()

# Every string that must never reach the page, a response the page saw, or this output:
# each secret, the DSN that carries one, and the lines of the private key's body.
NEVER = dict(SECRETS)
NEVER["dsn"] = f"postgres://app:{SECRETS['dsn_password']}@db.example.com:5432/app"
for i, line in enumerate(l.strip() for l in SSH_KEY.splitlines()):
    if line and not line.startswith("-----") and len(line) >= 12:
        NEVER[f"ssh_key_line{i}"] = line


def encodings(value):
    """The value as typed and base64-encoded (standard and URL-safe, with/without padding)."""
    raw = value.encode()
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {value, std, std.rstrip("="), url, url.rstrip("=")}


NEEDLES = [(name, enc) for name, v in NEVER.items() for enc in encodings(v)]
TOKENS = {"alice token": ALICE, "root token": ROOT}


def redact(text):
    text = str(text)
    for name, enc in NEEDLES:
        text = text.replace(enc, f"<secret:{name}>")
    for name, tok in TOKENS.items():
        text = text.replace(tok, f"<{name}>")
    return text


def say(*parts):
    print(redact(" ".join(str(p) for p in parts)), flush=True)


def leaks(text):
    """Names of the secrets found in `text` (raw or base64)."""
    return sorted({name for name, enc in NEEDLES if enc in text})


# ---- bookkeeping --------------------------------------------------------------------

FAILURES = []


class Failed(Exception):
    pass


def check(ok, message):
    if not ok:
        raise Failed(message)


@contextmanager
def section(name):
    t0 = time.monotonic()
    try:
        yield
        say(f"ok   {name} ({time.monotonic() - t0:.1f}s)")
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next section runs
        detail = str(e) if isinstance(e, Failed) else "".join(traceback.format_exception_only(type(e), e)).strip()
        # Playwright appends its call log and an ARIA snapshot of the whole page: keep the
        # message and the first lines of the log.
        detail = detail.split("\n\nAria snapshot")[0]
        lines = detail.splitlines()
        detail = "\n    ".join(lines[:8] + (["..."] if len(lines) > 8 else []))
        FAILURES.append((name, detail))
        say(f"FAIL {name}: {detail}")
        if not isinstance(e, (Failed, AssertionError)):
            say(traceback.format_exc(limit=4))


# ---- the API, as a second opinion ---------------------------------------------------


def api(method, path, token=ALICE, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, (json.loads(text) if text else None)


def api_ok(method, path, token=ALICE, body=None):
    status, data = api(method, path, token, body)
    check(200 <= status < 300, f"API {method} {path} answered {status}: {redact(json.dumps(data))[:300]}")
    return data


def credentials(**params):
    q = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
    return api_ok("GET", "/api/credentials?limit=200" + ("&" + q if q else ""))["items"]


# ---- the local service the bearer/basic credentials are tested against --------------


class Service:
    """Answers 200 to `Authorization: Bearer <good>`, Basic with the right password or
    `X-API-Key: <key>`, 401
    to anything else. Counts requests; never prints what it receives."""

    def __init__(self):
        good_basic = base64.b64encode(f"svc:{SECRETS['basic_password']}".encode()).decode()
        self.accepted = {f"Bearer {SECRETS['bearer_good']}", f"Basic {good_basic}"}
        self.key = SECRETS["api_key"]
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                ok = (self.headers.get("Authorization", "") in outer.accepted
                      or self.headers.get("X-API-Key", "") == outer.key)
                body = b'{"ok":true}' if ok else b'{"error":"unauthorized"}'
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/check"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ---- the browser --------------------------------------------------------------------


class Watch:
    """What a page did: console messages, page errors, dialogs, and the API responses it
    received (bodies read at checkpoints)."""

    def __init__(self):
        self.console = []
        self.errors = []
        self.dialogs = []
        self.responses = []
        self.failed = []  # (method, path, status) of every answer >= 400 the page received
        self.checked = 0

    def attach(self, page, accept_dialogs):
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

        def dialog(d):
            self.dialogs.append((d.type, d.message))
            if accept_dialogs[0]:
                d.accept()
            else:
                d.dismiss()

        page.on("dialog", dialog)
        page.on("response", self.on_response)

    def on_response(self, r):
        if "/api/" in r.url:
            self.responses.append(r)
        if r.status >= 400:
            self.failed.append((r.request.method, r.url.split("?")[0].replace(BASE, ""), r.status))

    def check_responses(self):
        """Every API answer the page received so far carries no secret."""
        pending, self.responses = self.responses, []
        for r in pending:
            try:
                body = r.body().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - bodies of redirects/204s or evicted ones
                continue
            self.checked += 1
            hit = leaks(body) + leaks(json.dumps(dict(r.headers)))
            check(not hit, f"the page received a secret ({', '.join(hit)}) in the answer to {r.request.method} {r.url}")


def launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


def hash_of(page):
    return page.evaluate("location.hash")


def wait_hash(page, pattern, timeout=10_000):
    page.wait_for_function(
        "re => new RegExp(re).test(location.hash)", arg=pattern, timeout=timeout
    )


def page_secrets(page, where, inputs=True):
    """No secret in the DOM, any input's value (unless a form is still open with what the
    user typed: `inputs=False`), the URL, or the browser's storage."""
    html = page.content()
    values = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')].map(e => e.value).join('\\n')"""
    ) if inputs else ""
    storage = page.evaluate(
        """() => JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])"""
    )
    for what, text in [("the page's HTML", html), ("an input's value", values), ("the URL", page.url), ("browser storage", storage)]:
        hit = leaks(text)
        check(not hit, f"{where}: {what} contains a secret ({', '.join(hit)})")


def sign_in(page, token):
    page.goto(UI + "#/signin")
    field = page.get_by_label("API token", exact=True)
    expect(field).to_be_visible()
    field.fill(token)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    wait_hash(page, r"^#/credentials")


LABEL_IDS = """text => [...document.querySelectorAll('#main label[for]')].filter(l => {
    const c = l.cloneNode(true); c.querySelectorAll('.req').forEach(r => r.remove());
    return c.textContent.trim() === text;
}).map(l => l.htmlFor)"""


def by_label(page, text, timeout=10_000):
    """The one control whose <label for> reads exactly `text` (a required marker aside)."""
    try:
        page.wait_for_function(f"text => ({LABEL_IDS})(text).length > 0", arg=text, timeout=timeout)
    except Exception:  # noqa: BLE001
        raise Failed(f"no <label for> reading {text!r} on {hash_of(page)!r}") from None
    ids = page.evaluate(LABEL_IDS, text)
    check(len(ids) == 1, f"{len(ids)} labels read {text!r} on {hash_of(page)!r}: for={ids}")
    el = page.locator(f"[id='{ids[0]}']")
    check(el.count() == 1, f"label {text!r} is for #{ids[0]}, and {el.count()} elements have that id")
    return el


def field_input(page, spec):
    """The input of a descriptor field, found by its label, checked against the conventions."""
    el = by_label(page, spec["label"])
    fid = el.get_attribute("id")
    check(fid == f"f-{spec['name']}", f"form: input labelled {spec['label']!r} has id {fid!r}, expected 'f-{spec['name']}'")
    check(el.get_attribute("name") == spec["name"], f"form: #{fid} has name {el.get_attribute('name')!r}, expected {spec['name']!r}")
    tag = el.evaluate("e => e.tagName.toLowerCase()")
    if spec["secret"]:
        if spec["kind"] == "multiline":
            check(tag == "textarea" and "secret" in (el.get_attribute("class") or "").split(),
                  f"form: multiline secret #{fid} is <{tag} class={el.get_attribute('class')!r}>, expected <textarea class=secret>")
        else:
            check(tag == "input" and el.get_attribute("type") == "password",
                  f"form: secret #{fid} is <{tag} type={el.get_attribute('type')!r}>, expected type=password")
            check(el.get_attribute("autocomplete") == "new-password",
                  f"form: secret #{fid} autocomplete={el.get_attribute('autocomplete')!r}, expected new-password")
    if spec["required"]:
        check(el.evaluate("e => e.required") and el.get_attribute("aria-required") == "true",
              f"form: required field #{fid} lacks required/aria-required=true")
        req = page.locator(f"label[for='{fid}'] span.req[aria-hidden='true']")
        check(req.count() == 1, f"form: label of required #{fid} has no <span class=req aria-hidden=true>")
    if spec.get("help"):
        described = (el.get_attribute("aria-describedby") or "").split()
        helps = [d for d in described if page.locator(f"p.help#{d}").count() == 1]
        check(helps, f"form: #{fid} has help text but aria-describedby={described} names no p.help")
        text = page.locator(f"p.help#{helps[0]}").inner_text()
        check(spec["help"] in text, f"form: help of #{fid} reads {text!r}, expected the descriptor's help")
    return el, tag


def fill_field(el, tag, spec, value):
    if spec["kind"] == "choice" or tag == "select":
        el.select_option(value)
    elif spec["kind"] == "boolean":
        el.set_checked(value in (True, "true"))
    else:
        el.fill(str(value))


def choose_type(page, type_id):
    page.goto(UI + "#/add")
    sel = by_label(page, "Type")
    expect(sel).to_be_visible()
    sel.select_option(type_id)
    return sel


def common_inputs(page, name, environment=None, description=None, tags=None):
    by_label(page, "Name").fill(name)
    if environment is not None:
        by_label(page, "Environment").select_option(environment)
    if description is not None:
        by_label(page, "Description").fill(description)
    if tags is not None:
        by_label(page, "Tags").fill(tags)


def submit(page):
    page.get_by_role("button", name="Create credential", exact=True).click()


# ---- the run ------------------------------------------------------------------------


def main():
    os.makedirs(SHOTS, exist_ok=True)
    service = Service()
    types = {t["id"]: t for t in json.loads(urllib.request.urlopen(BASE + "/api/credential-types", timeout=30).read())}
    missing = [t for t in BUILTINS if t not in types]
    check(not missing, f"built-in types missing from GET /api/credential-types: {missing}")

    # Names, descriptions and tags that read well in the screenshots (docs/ shows two).
    looks = {
        "alpaca": ("trading-paper", "Paper trading keys for the rebalancer", "trading, paper"),
        "ssh": ("deploy-box", "Deploy user on the build host", "ops, deploy"),
        "bearer_token": ("status-api", "Status page API", "monitoring"),
        "db_dsn": ("orders-db", "Orders database, read-only user", "prod, db"),
        "http_basic": ("legacy-admin", "Old admin panel behind Basic auth", "ops"),
        "api_key": ("weather-api", "Weather data provider", "data"),
    }
    alpaca_key_id = "PK" + "".join("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[int(c, 16) % 32] for c in os.urandom(10).hex())
    # A valid value for every field we fill (the plugins' validate() rules); `None` = leave empty.
    values = {
        "alpaca": {"key_id": alpaca_key_id, "secret_key": SECRETS["alpaca_secret"]},
        "ssh": {"host": "ssh.example.com", "port": "22", "username": "deploy", "private_key": SSH_KEY},
        "bearer_token": {"token": SECRETS["bearer_good"], "test_url": service.url},
        "db_dsn": {"dsn": NEVER["dsn"]},
        "http_basic": {"username": "svc", "password": SECRETS["basic_password"], "test_url": service.url},
        "api_key": {"key": SECRETS["api_key"], "test_url": service.url},
    }
    environments = {"alpaca": "paper"}
    created = {}  # type -> (id, name)

    watch = Watch()
    accept = [True]
    with sync_playwright() as p:
        browser = launch(p)
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(10_000)
        expect.set_options(timeout=10_000)
        page = ctx.new_page()
        watch.attach(page, accept)

        # 8 (first half): the headers of /ui/.
        with section("security headers on /ui/"):
            r = page.goto(UI)
            check(r is not None and r.status == 200, f"GET /ui/ answered {r and r.status}")
            h = r.headers
            check(h.get("content-security-policy") == CSP,
                  f"/ui/ Content-Security-Policy is {h.get('content-security-policy')!r}, expected {CSP!r}")
            check(h.get("x-frame-options") == "DENY", f"/ui/ X-Frame-Options is {h.get('x-frame-options')!r}")
            for asset in ["app.js", "core.js", "app.css"]:
                a = ctx.request.get(UI + asset)
                check(a.status == 200 and a.headers.get("content-security-policy") == CSP,
                      f"/ui/{asset}: status {a.status}, CSP {a.headers.get('content-security-policy')!r}")

        # 1: sign in, the token's home, sign out, a wrong token.
        with section("sign-in: wrong token shows an error and stays"):
            page.goto(UI + "#/signin")
            page.get_by_label("API token", exact=True).fill("chst_" + "x" * 40)
            page.get_by_role("button", name="Sign in", exact=True).click()
            err = page.locator("#token-error")
            expect(err).not_to_be_empty()
            check(hash_of(page).startswith("#/signin"), f"after a wrong token the hash is {hash_of(page)!r}")
            expect(page.get_by_label("API token", exact=True)).to_be_visible()
            stored = page.evaluate("() => sessionStorage.length + localStorage.length")
            check(stored == 0, f"a wrong token left {stored} item(s) in web storage")

        with section("sign-in with the keyboard (Tab to the token, Enter submits)"):
            page.goto(UI + "#/signin")
            expect(page.get_by_label("API token", exact=True)).to_be_visible()
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            for _ in range(15):
                page.keyboard.press("Tab")
                if page.evaluate("() => document.activeElement && document.activeElement.id") == "token":
                    break
            check(page.evaluate("() => document.activeElement.id") == "token", "15 Tabs never reached the token input")
            page.keyboard.type(ALICE)
            page.keyboard.press("Enter")
            expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
            wait_hash(page, r"^#/credentials")

        with section("sign-in: the token is in sessionStorage only; Sign out removes it"):
            in_session = page.evaluate("() => Object.values(sessionStorage)")
            check(ALICE in in_session, "after sign-in the token is not in sessionStorage")
            check(page.evaluate("() => localStorage.length") == 0, "localStorage is not empty after sign-in")
            check(ALICE not in page.url, "the token is in the URL")
            check(ALICE not in page.content(), "the token is in the page's HTML")
            check(ALICE not in page.evaluate("() => document.cookie"), "the token is in a cookie")
            page.get_by_role("button", name="Sign out", exact=True).click()
            expect(page.get_by_label("API token", exact=True)).to_be_visible()
            wait_hash(page, r"^#/signin")
            check(page.evaluate("() => sessionStorage.length") == 0, "Sign out left something in sessionStorage")
            sign_in(page, ALICE)

        # 2 and 7: every built-in type through its generated form; no secret left behind.
        for type_id in BUILTINS:
            with section(f"create {type_id} through its form"):
                desc = types[type_id]
                name, description, tags = looks[type_id]
                choose_type(page, type_id)
                for spec in desc["fields"]:
                    value = values[type_id].get(spec["name"])
                    if value is None and spec["required"]:
                        raise Failed(f"the test knows no valid value for required field {type_id}.{spec['name']}")
                    el, tag = field_input(page, spec)
                    if value is not None:
                        fill_field(el, tag, spec, value)
                common_inputs(page, name, environments.get(type_id),
                              description=description, tags=tags)
                submit(page)
                expect(page.locator("h1")).to_have_text(name)
                wait_hash(page, r"^#/credentials/[^/?]+$")
                cid = hash_of(page).split("/")[2]
                created[type_id] = (cid, name)
                page_secrets(page, f"detail page after creating {type_id}")
                watch.check_responses()
                view = api_ok("GET", f"/api/credentials/{cid}")
                check(view["type"] == type_id and view["name"] == name,
                      f"API: credential {cid} is {view['type']!r} named {view['name']!r}")
                if type_id in environments:
                    check(view["environment"] == environments[type_id], f"API: environment {view['environment']!r}")
                want = [t.strip() for t in tags.split(",")]
                check(view["tags"] == want and view["description"] == description,
                      f"API: tags {view['tags']!r}, description {view['description']!r}; expected {want!r}, {description!r}")
                for spec in desc["fields"]:
                    if spec["secret"] and values[type_id].get(spec["name"]):
                        got = view["fields"].get(spec["name"])
                        check(isinstance(got, dict) and got.get("set") is True,
                              f"API: secret field {type_id}.{spec['name']} not set: {redact(got)}")

        # 3: field errors from the server, next to their inputs; nothing created.
        def field_error(type_id, fill, bad_field, env=None):
            name = f"rejected-{type_id}"
            choose_type(page, type_id)
            for spec in types[type_id]["fields"]:
                if spec["name"] in fill:
                    el, tag = field_input(page, spec)
                    fill_field(el, tag, spec, fill[spec["name"]])
            common_inputs(page, name, env)
            submit(page)
            err = page.locator(f"#err-{bad_field}")
            expect(err).to_be_visible()
            check(err.evaluate("e => e.tagName") == "P" and "field-error" in (err.get_attribute("class") or "").split()
                  and err.get_attribute("role") == "alert",
                  f"#err-{bad_field} is not <p class=field-error role=alert>")
            check(err.inner_text().strip() != "", f"#err-{bad_field} is empty")
            inp = page.locator(f"#f-{bad_field}")
            expect(inp).to_have_attribute("aria-invalid", "true")
            follows = page.evaluate(
                "f => { const e = document.getElementById('err-' + f); const i = document.getElementById('f-' + f);"
                " return !!(e && i && (i.nextElementSibling === e || (i.compareDocumentPosition(e) & 4)"
                " && i.parentElement.contains(e))); }",
                bad_field,
            )
            check(follows, f"#err-{bad_field} does not follow #f-{bad_field} in its field")
            check(hash_of(page).startswith("#/add"), f"after a field error the hash is {hash_of(page)!r}")
            check(not [c for c in credentials(name=name)], f"a credential named {name!r} was created anyway")
            # The form stays open with what was typed (to be corrected): the secret may sit in
            # its input's value, but never in the HTML, the URL or storage.
            page_secrets(page, f"{type_id} form after a field error", inputs=False)
            watch.check_responses()
            return err.inner_text()

        with section("field error: bearer_token test_url ftp://x"):
            msg = field_error("bearer_token", {"token": SECRETS["bearer_error"], "test_url": "ftp://x"}, "test_url")
            check("http" in msg, f"#err-test_url reads {msg!r}, expected the server's message about http(s)")

        with section("field error: alpaca secret key too short"):
            field_error("alpaca", {"key_id": alpaca_key_id, "secret_key": SECRETS["alpaca_short_secret"]},
                        "secret_key", env="paper")

        # 4: test against the local service; the badge follows.
        bearer = created.get("bearer_token")
        with section("test: untested -> valid -> (replace secret) -> invalid, list badge follows"):
            check(bearer, "no bearer_token credential was created")
            cid, name = bearer
            page.goto(UI + f"#/credentials/{cid}")
            expect(page.locator("h1")).to_have_text(name)
            expect(page.locator("#health")).to_have_attribute("data-health", "untested")
            hits = service.hits
            with page.expect_response(lambda r: r.url.endswith(f"/api/credentials/{cid}/test")) as got:
                page.get_by_role("button", name="Test", exact=True).click()
            outcome = got.value.json()
            expect(page.locator("#health")).to_have_attribute("data-health", "valid")
            check(service.hits > hits, "the local service was not called by the test")
            result = page.locator("#test-result")
            expect(result).to_contain_text(str(outcome["status"]))
            if outcome.get("summary"):
                expect(result).to_contain_text(outcome["summary"])
            for k in (outcome.get("facts") or {}):
                expect(result.locator("dl")).to_contain_text(k)
            page.screenshot(path=os.path.join(SHOTS, "detail.png"), full_page=True)
            page.goto(UI + "#/credentials")
            expect(page.locator(f"tr[data-id='{cid}'] .badge")).to_have_attribute("data-health", "valid")

            # Replace the secret with one the service refuses, then test again.
            page.goto(UI + f"#/credentials/{cid}")
            expect(page.locator("h1")).to_have_text(name)
            page.get_by_role("button", name="Replace secret", exact=True).click()
            token_spec = next(s for s in types["bearer_token"]["fields"] if s["name"] == "token")
            el, tag = field_input(page, token_spec)
            el.fill(SECRETS["bearer_bad"])
            with page.expect_response(lambda r: f"/api/credentials/{cid}" in r.url and r.request.method in ("PATCH", "POST", "PUT")):
                page.get_by_role("button", name="Save changes", exact=True).click()
            expect(page.locator("#f-token")).to_have_count(0)
            page_secrets(page, "detail page after replacing the secret")
            page.get_by_role("button", name="Test", exact=True).click()
            expect(page.locator("#health")).to_have_attribute("data-health", "invalid")
            expect(page.locator("#test-result")).to_contain_text("invalid")
            page.goto(UI + "#/credentials")
            expect(page.locator(f"tr[data-id='{cid}'] .badge")).to_have_attribute("data-health", "invalid")
            check(api_ok("GET", f"/api/credentials/{cid}")["health"] == "invalid", "API: health is not invalid")
            watch.check_responses()

        # Give the list several healths: http_basic and api_key tested through the API (valid).
        with section("tests through the API: http_basic and api_key are valid"):
            for t in ["http_basic", "api_key"]:
                check(t in created, f"no {t} credential was created")
                r = api_ok("POST", f"/api/credentials/{created[t][0]}/test")
                check(r["status"] == "valid", f"API: testing {t} against the local service said {r['status']}: {r.get('summary')}")

        # 5: delete and restore.
        with section("delete (confirm) and restore"):
            check("api_key" in created, "no api_key credential was created")
            cid, name = created["api_key"]
            page.goto(UI + f"#/credentials/{cid}")
            expect(page.locator("h1")).to_have_text(name)
            n = len(watch.dialogs)
            page.get_by_role("button", name="Delete", exact=True).click()
            expect(page.get_by_role("button", name="Restore", exact=True)).to_be_visible()
            expect(page.locator("#main .marker-deleted")).to_be_visible()
            check(len(watch.dialogs) > n and watch.dialogs[-1][0] == "confirm", "Delete asked no confirm() question")
            check(cid in [c["id"] for c in credentials(deleted_only="true")], "API: not among the deleted after Delete")
            page.goto(UI + "#/credentials")
            expect(page.locator(f"tr[data-id='{created['ssh'][0]}']")).to_be_visible()
            expect(page.locator(f"tr[data-id='{cid}']")).to_have_count(0)
            show_deleted(page)
            expect(page.locator(f"tr[data-id='{cid}']")).to_be_visible()
            expect(page.locator(f"tr[data-id='{cid}'] .marker-deleted")).to_be_visible()
            page.locator(f"tr[data-id='{cid}'] a[href='#/credentials/{cid}']").click()
            expect(page.locator("h1")).to_have_text(name)
            page.get_by_role("button", name="Restore", exact=True).click()
            expect(page.get_by_role("button", name="Delete", exact=True)).to_be_visible()
            expect(page.locator("#main .marker-deleted")).to_have_count(0)
            check(not api_ok("GET", f"/api/credentials/{cid}").get("deleted_at"), "API: still deleted after Restore")
            page.goto(UI + "#/credentials")
            expect(page.locator(f"tr[data-id='{cid}']")).to_be_visible()

        # Screenshots of the list and the add form at 1280x800.
        with section("screenshots: list.png, add-form.png"):
            page.goto(UI + "#/credentials")
            page.reload()  # a reload keeps the session (sessionStorage) and clears the status line
            expect(page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
            expect(page.locator("tr[data-id]").first).to_be_visible()
            check(page.locator("tr[data-id]").count() >= 6, f"the list shows {page.locator('tr[data-id]').count()} rows")
            page.screenshot(path=os.path.join(SHOTS, "list.png"), full_page=True)
            choose_type(page, "alpaca")
            expect(page.locator("#f-secret_key")).to_be_visible()
            by_label(page, "Name").fill("trading (paper)")
            by_label(page, "Environment").select_option("paper")
            page_secrets(page, "the add form")
            page.screenshot(path=os.path.join(SHOTS, "add-form.png"), full_page=True)

        # 6: hostile text renders as text.
        with section("XSS: names, descriptions and tags render as text"):
            xname = '<img src=x onerror="window.__xss=1;alert(1)">'
            xdesc = "<script>window.__xss=2;alert(2)</script>"
            xtag = "<svg onload=window.__xss=3>"
            status, view = api("POST", "/api/credentials", body={
                "type": "bearer_token", "name": xname, "description": xdesc, "tags": [xtag, "<b>bold</b>"],
                "fields": {"token": SECRETS["bearer_plain"]},
            })
            check(status == 201, f"API: creating the hostile credential answered {status}: {redact(view)}")
            xid = view["id"]
            n = len(watch.dialogs)
            page.goto(UI + "#/credentials?name_prefix=" + urllib.request.quote(xname, safe=""))
            row = page.locator(f"tr[data-id='{xid}']")
            expect(row).to_be_visible()
            expect(row).to_contain_text(xname)
            check(row.locator("img, svg, script, b").count() == 0, "the hostile row contains an img/svg/script/b element")
            page.goto(UI + f"#/credentials/{xid}")
            expect(page.locator("h1")).to_have_text(xname)
            main = page.locator("#main")
            expect(main).to_contain_text(xdesc)
            expect(main).to_contain_text(xtag)
            check(main.locator("img, svg, script, b").count() == 0, "the hostile detail page contains an img/svg/script/b element")
            page.wait_for_timeout(300)
            check(page.evaluate("() => typeof window.__xss") == "undefined", "window.__xss was set: a payload ran")
            check(len(watch.dialogs) == n, f"a dialog fired: {watch.dialogs[n:]}")

        # 9: a 375 px viewport.
        with section("375 px: no horizontal scroll on the list and the add forms"):
            page.set_viewport_size({"width": 375, "height": 800})
            page.goto(UI + "#/credentials")
            expect(page.locator("tr[data-id]").first).to_be_visible()
            width = page.evaluate("() => document.documentElement.scrollWidth")
            page.screenshot(path=os.path.join(SHOTS, "narrow-list.png"), full_page=True)
            check(width <= 375, f"the list is {width}px wide at a 375px viewport")
            for type_id in BUILTINS:
                choose_type(page, type_id)
                expect(page.locator("#f-" + types[type_id]["fields"][0]["name"])).to_be_visible()
                width = page.evaluate("() => document.documentElement.scrollWidth")
                check(width <= 375, f"the {type_id} add form is {width}px wide at a 375px viewport")
            if bearer:
                page.goto(UI + f"#/credentials/{bearer[0]}")
                expect(page.locator("h1")).to_be_visible()
                width = page.evaluate("() => document.documentElement.scrollWidth")
                check(width <= 375, f"the detail page is {width}px wide at a 375px viewport")
            page.set_viewport_size({"width": 1280, "height": 800})

        # 10 (grants): a grant's token is shown once; Done removes it.
        with section("grants: token shown once, Done removes it"):
            check(bearer, "no bearer_token credential was created")
            page.goto(UI + f"#/credentials/{bearer[0]}")
            expect(page.locator("h1")).to_have_text(bearer[1])
            page.get_by_role("button", name="Create grant", exact=True).click()
            with page.expect_response(lambda r: r.url.endswith(f"/api/credentials/{bearer[0]}/grants")
                                      and r.request.method == "POST") as got:
                submit_grant(page)
            grant_token = got.value.json()["token"]
            shown = page.locator(".shown-once")
            expect(shown).to_be_visible()
            check(grant_token in shown.evaluate("e => e.textContent + [...e.querySelectorAll('input, textarea')].map(i => i.value).join(' ')"),
                  "the grant's token is not shown in .shown-once")
            grants = api_ok("GET", f"/api/credentials/{bearer[0]}/grants")
            check(len(grants) == 1, f"API: {len(grants)} grants after Create grant")
            page.get_by_role("button", name="Done", exact=True).click()
            expect(page.locator(".shown-once")).to_have_count(0)
            check(grant_token not in page.content(), "the grant's token is still in the page after Done")
            watch.check_responses()

        # 8 (second half): no CSP violation and no JS error in alice's session.
        with section("no CSP violation, no JavaScript error (user session)"):
            say(f"     ({len(watch.console)} console messages, {len(watch.errors)} page errors, "
                f"{watch.checked} API answers checked for secrets, {service.hits} calls to the local service)")
            expected = {("GET", "/api/tokens", 401), ("POST", "/api/credentials", 422)}
            if "api_key" in created:  # the detail page re-reads the credential it just deleted
                expected.add(("GET", f"/api/credentials/{created['api_key'][0]}", 404))
            problems(watch, expected)
            check(watch.checked > 10, f"only {watch.checked} API answers were checked for secrets")

        # 10: the admin pages.
        actx = browser.new_context(viewport={"width": 1280, "height": 800})
        actx.set_default_timeout(10_000)
        apage = actx.new_page()
        awatch = Watch()
        awatch.attach(apage, accept)
        with section("admin: Plugins lists the built-ins; Reload plugins answers"):
            sign_in(apage, ROOT)
            link = apage.get_by_role("link", name="Plugins", exact=True)
            expect(link).to_be_visible()
            link.click()
            wait_hash(apage, r"^#/admin/plugins")
            main = apage.locator("#main")
            for t in BUILTINS:
                expect(main).to_contain_text(t)
            with apage.expect_response(lambda r: r.url.endswith("/api/admin/plugins/reload")) as got:
                apage.get_by_role("button", name="Reload plugins", exact=True).click()
            check(got.value.status == 200, f"POST /api/admin/plugins/reload answered {got.value.status}")
            expect(apage.get_by_role("button", name="Reload plugins", exact=True)).to_be_enabled()
            for t in BUILTINS:
                expect(main).to_contain_text(t)
            apage.screenshot(path=os.path.join(SHOTS, "admin-plugins.png"), full_page=True)
        with section("alice sees no admin links"):
            for label in ["Users", "All tokens", "Plugins"]:
                expect(page.get_by_role("link", name=label, exact=True)).to_have_count(0)
        with section("no CSP violation, no JavaScript error (admin session)"):
            problems(awatch)
            awatch.check_responses()

        browser.close()

    took = time.monotonic() - STARTED
    say(f"console test: {len(FAILURES)} failed section(s), {took:.1f}s, screenshots in {SHOTS}")
    if FAILURES:
        for name, detail in FAILURES:
            say(f"  - {name}: {detail.splitlines()[0]}")
        sys.exit(1)
    say("console test: all checks passed")


def show_deleted(page):
    """The list's "Show deleted" control: a checkbox, a button or a link with that name."""
    for role in ["checkbox", "button", "link", "switch"]:
        c = page.get_by_role(role, name="Show deleted", exact=True)
        if c.count():
            if role == "checkbox" or role == "switch":
                c.check()
            else:
                c.click()
            return
    raise Failed('the list page has no "Show deleted" checkbox/button/link')


def submit_grant(page):
    """The grant form (opened by "Create grant"), submitted with its defaults and a label."""
    form = page.locator("form.grant-form")
    expect(form).to_be_visible()
    by_label(page, "Label").fill("browser-test agent")
    form.get_by_role("button", name="Create grant", exact=True).click()


# Chromium logs each non-2xx fetch as "Failed to load resource"; those are the API saying
# no (a wrong token, a field error), not page faults.
NETWORK_LOG = re.compile(r"^Failed to load resource: the server responded with a status of (4\d\d)")


def problems(watch, expected=()):
    """No page error, no CSP report, no console error other than Chromium's log line for an
    answer >= 400, and no such answer other than the `expected` (method, path, status)."""
    errs = [f"pageerror: {e}" for e in watch.errors]
    errs += [f"unexpected {st} for {m} {p}" for m, p, st in watch.failed if (m, p, st) not in expected]
    for kind, text in watch.console:
        if "Content Security Policy" in text or "Refused to" in text:
            errs.append(f"CSP: {text}")
        elif kind == "error" and not NETWORK_LOG.match(text):
            errs.append(f"console.error: {text}")
    for method, path, status in watch.failed:
        say(f"     the page received {status} for {method} {path}")
    check(not errs, "; ".join(errs[:10]))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        say("console test: aborted:", "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        sys.exit(2)
