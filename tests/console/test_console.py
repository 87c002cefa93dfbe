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
# The secret of the hostile-fixture credentials (made here: the fixture is test-only).
NEVER["hostile_secret"] = "hs_" + os.urandom(16).hex()
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
                if self.path.startswith(("/report", "/echo")):
                    # The hostile fixture's `report` test turns `key=value` lines into facts;
                    # its `echo` test puts the body into the summary: HTML in both.
                    body = (XSS_FACTS if self.path.startswith("/report") else XSS_SUMMARY).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
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
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = self.base + "/check"
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
        self.requests = []  # (method, url) of every request the page made

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
        page.on("request", lambda r: self.requests.append((r.method, r.url)))

    def check_urls(self):
        """Every request stayed on the server (/api/ or /ui/) and no URL carries a secret."""
        for method, url in self.requests:
            check(url.startswith((BASE + "/api/", BASE + "/ui/")), f"the page requested {method} {redact(url)[:200]}")
            hit = leaks(url) + [n for n, t in TOKENS.items() if t in url]
            check(not hit, f"a URL the page requested carries a secret ({', '.join(hit)})")

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


def expect_session_ended(page, watch, when):
    """The status line says the session ended; if not, the failure says what the page
    last asked and heard (a rare CI failure left only an empty #notice to go on)."""
    try:
        expect(page.locator("#notice")).to_contain_text("session ended")
    except AssertionError as e:
        recent = [f"{m} {redact(u).replace(BASE, '')[:80]}" for m, u in watch.requests[-8:]]
        raise AssertionError(f"{e}\n{when}: hash {page.evaluate('() => location.hash')!r}, answers >= 400 {watch.failed[-6:]}, "
                             f"last requests {recent}, console {watch.console[-6:]}, page errors {watch.errors[-3:]}") from None


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


# ---- attacks (issue 15 review): hostile strings, hash tricks, secrets, session, a11y --

# Payloads that set window.__xss if they ever run; each spot has its own number.
XSS_FACTS = ("<img src=x onerror=window.__xss=1>key=<script>window.__xss=2</script>value\n"
             "expires_note=<svg onload=window.__xss=3>\n"
             "link=javascript:window.__xss=4\n")
XSS_SUMMARY = '"><img src=x onerror=window.__xss=5>'

XSS_PROBE = r"""() => ({
  xss: typeof window.__xss === 'undefined' ? null : String(window.__xss),
  elements: document.querySelectorAll(
    '#main img, #main svg, #main script, #main iframe, #main object, #main embed, #main b, #notice img, #notice script').length,
  hrefs: [...document.querySelectorAll('a[href], area[href], [src]')]
    .map(a => a.getAttribute('href') || a.getAttribute('src'))
    .filter(h => !/^#(main|\/[^<>"'`\s]*)$/.test(h) && h !== 'icon.svg' && h !== 'app.js' && h !== 'app.css'),
  handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => /^on/i.test(a.name))).length,
})"""


def no_xss(page, watch, where, dialogs_before=None):
    page.wait_for_timeout(150)  # an injected onerror/onload would have fired by now
    r = page.evaluate(XSS_PROBE)
    check(r["xss"] is None, f"{where}: window.__xss = {r['xss']}: a payload ran")
    check(r["elements"] == 0, f"{where}: {r['elements']} img/svg/script/iframe/b element(s) in the page")
    check(not r["hrefs"], f"{where}: links/sources other than #/ routes: {r['hrefs'][:5]}")
    check(r["handlers"] == 0, f"{where}: {r['handlers']} element(s) with an on* attribute")
    if dialogs_before is not None:
        check(len(watch.dialogs) == dialogs_before, f"{where}: a dialog fired: {watch.dialogs[dialogs_before:]}")


A11Y = r"""() => {
  const out = [];
  const named = (el) => (el.getAttribute('aria-label') || '').trim() ||
    (el.getAttribute('aria-labelledby') || '').split(/\s+/).filter(Boolean)
      .map(id => (document.getElementById(id) || {}).textContent || '').join('').trim();
  const desc = (el) => `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${el.name ? '[name=' + el.name + ']' : ''}`;
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (el.type === 'hidden') continue;
    const text = [...(el.labels || [])].map(l => l.textContent).join('').trim() || named(el);
    if (!text) out.push(`${desc(el)} has no label with text`);
  }
  for (const b of document.querySelectorAll('button, a[href], [role=button]')) {
    const text = (b.textContent || '').trim() || named(b) || [...b.querySelectorAll('img[alt]')].map(i => i.alt).join('').trim();
    if (!text) out.push(`${desc(b)} has no accessible name`);
  }
  for (const el of document.querySelectorAll('[tabindex]')) if (el.tabIndex > 0) out.push(`${desc(el)} has tabindex ${el.tabIndex}`);
  const h1 = document.querySelectorAll('#main h1').length;
  if (h1 !== 1) out.push(`${h1} <h1> in #main`);
  const ids = {};
  for (const el of document.querySelectorAll('[id]')) ids[el.id] = (ids[el.id] || 0) + 1;
  for (const [id, n] of Object.entries(ids)) if (n > 1) out.push(`id ${id} is used ${n} times`);
  for (const el of document.querySelectorAll('[aria-describedby], [aria-labelledby]'))
    for (const a of ['aria-describedby', 'aria-labelledby'])
      for (const id of (el.getAttribute(a) || '').split(/\s+/).filter(Boolean))
        if (!document.getElementById(id)) out.push(`${a} of ${desc(el)} names a missing #${id}`);
  for (const l of document.querySelectorAll('label[for]')) if (!document.getElementById(l.htmlFor)) out.push(`label for=${l.htmlFor} names nothing`);
  for (const t of document.querySelectorAll('#main th')) if (!t.textContent.trim()) out.push('an empty table header');
  return out;
}"""

FOCUS_SHOWN = r"""() => {
  const e = document.activeElement;
  if (!e || e === document.body) return '';
  const s = getComputedStyle(e);
  const shown = (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';
  return shown ? '' : `${e.tagName.toLowerCase()}#${e.id} "${(e.textContent || e.value || '').trim().slice(0, 30)}" shows no focus`;
}"""


def a11y(page, where, tabs=0):
    """The automated accessibility check of the page as it is now; `tabs`: also Tab through
    that many elements from the top and check each shows its focus."""
    found = page.evaluate(A11Y)
    check(not found, f"{where}: " + "; ".join(found[:6]))
    if tabs:
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        for _ in range(tabs):
            page.keyboard.press("Tab")
            problem = page.evaluate(FOCUS_SHOWN)
            check(not problem, f"{where}: {problem}")


def no_hscroll(page, where):
    width = page.evaluate("() => document.documentElement.scrollWidth")
    check(width <= 375, f"{where} is {width}px wide at a 375px viewport")


def tab_to(page, element_id, limit=25):
    for _ in range(limit):
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    check(page.evaluate("() => document.activeElement && document.activeElement.id") == element_id,
          f"{limit} Tabs never reached #{element_id}")


def page_problems(watch):
    """No page error and no CSP report (answers >= 400 are expected in these sections)."""
    errs = [f"pageerror: {e}" for e in watch.errors]
    errs += [f"CSP: {t}" for _, t in watch.console if "Content Security Policy" in t or "Refused to" in t]
    check(not errs, "; ".join(errs[:6]))


def raw_get(path):
    """GET `path` exactly as written (no client-side normalisation of .. or %2e)."""
    import http.client
    host, port = BASE.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


EVIL = "<img src=x onerror=window.__xss=40>"
FAKE_ID = "00000000-0000-4000-8000-00000000e411"


def evil_type():
    return {
        "id": "evil", "display_name": EVIL + "type", "version": "1<svg onload=window.__xss=41>",
        "description": "<script>window.__xss=42</script>", "environments": ["<b>prod</b>", "javascript:window.__xss=43"],
        "fields": [
            {"name": "plain", "label": EVIL + "label", "kind": "text", "secret": False, "required": True,
             "help": "<script>window.__xss=44</script>", "choices": [], "default": '"><img src=x onerror=window.__xss=45>'},
            {"name": "pick", "label": "Pick<b>!</b>", "kind": "choice", "secret": False, "required": False, "help": None,
             "choices": ['"><img src=x onerror=window.__xss=46>', "javascript:window.__xss=47"], "default": None},
            {"name": "link", "label": "Link", "kind": "url", "secret": False, "required": False, "help": None,
             "choices": [], "default": "javascript:window.__xss=48"},
            {"name": "note", "label": "Note", "kind": "multiline", "secret": False, "required": False,
             "help": None, "choices": [], "default": "</textarea><img src=x onerror=window.__xss=49>"},
            {"name": "pw", "label": "<b>pw</b>", "kind": "text", "secret": True, "required": False, "help": EVIL,
             "choices": [], "default": None},
        ],
    }


def fake_answer(path):
    """Hostile answers for the fake credential FAKE_ID (every string the detail page shows)."""
    now = "2026-12-01T10:00:00Z"
    later = "2099-01-01T00:00:00Z"
    if path.endswith("/tests"):
        return {"items": [{"at": now, "trigger": EVIL, "status": "<b>valid</b>", "summary": EVIL, "latency_ms": 1}]}
    if path.endswith("/versions"):
        return {"current": 1, "pending": None, "max_versions": 5, "items": [
            {"version": 1, "state": "current", "created_at": now, "actor": EVIL, "reason": EVIL, "forced": False,
             "test": {"status": EVIL, "summary": EVIL}},
            {"version": 2, "state": EVIL, "created_at": now, "actor": EVIL, "reason": EVIL, "test": None}]}
    if path.endswith("/grants"):
        return [{"grant_id": '"><img src=x onerror=window.__xss=50>', "label": EVIL, "methods": [EVIL],
                 "path_prefixes": [EVIL], "calls": 0, "max_calls": None, "expires_at": later, "revoked_at": None}]
    return {"id": FAKE_ID, "name": EVIL + "name", "type": "evil", "description": EVIL, "tags": [EVIL],
            "environment": "<b>prod</b>",
            "fields": {"plain": EVIL, "pick": "javascript:window.__xss=51", "link": "javascript:window.__xss=52",
                       "note": EVIL, "pw": {"set": True, "fingerprint": EVIL}, "unknown<b>": EVIL},
            "version": 1, "created_at": now, "updated_at": now, "deleted_at": None,
            "last_test": {"ok": True, "status": EVIL, "summary": EVIL, "facts": {EVIL: EVIL}, "at": now},
            "health": '"><img src=x onerror=window.__xss=53>', "next_test_at": None, "monitor": {"enabled": True},
            "expires_at": None}


def secrets_sections(page, watch, bearer):
    """Secrets never stay in the page: Edit, Rotate (promoted, failed, refused by the API),
    a failed create left by navigation, Sign out. Returns the 4xx answers it caused."""
    expected = set()
    with section("secrets: the edit form holds none; Rotate (promoted / failed / refused) leaves none"):
        check(bearer, "no bearer_token credential was created")
        cid, name = bearer
        page.goto(UI + f"#/credentials/{cid}")
        expect(page.locator("h1")).to_have_text(name)
        page.get_by_role("button", name="Edit", exact=True).click()
        expect(page.locator("form.detail-form")).to_be_visible()
        page_secrets(page, "the open edit form")
        by_label(page, "Description").fill("Status page API (edited)")
        page.get_by_role("button", name="Save changes", exact=True).click()
        expect(page.locator("form.detail-form")).to_have_count(0)
        page_secrets(page, "the detail page after Save changes")
        rotate = page.locator("form.detail-form")
        for value, result in [(SECRETS["bearer_good"], "promoted"), (SECRETS["bearer_bad"], "failed")]:
            page.get_by_role("button", name="Rotate", exact=True).click()
            page.locator("#f-token").fill(value)
            rotate.get_by_role("button", name="Rotate", exact=True).click()
            expect(page.locator(".rotate-result")).to_contain_text(result)
            expect(page.locator("#f-token")).to_have_count(0)
            page_secrets(page, f"the detail page after a rotation that was {result}")
            page.locator(".rotate-result").get_by_role("button", name="Close", exact=True).click()
        # The API refuses the rotation: the form stays (to correct), Cancel empties it.
        page.route("**/rotate", lambda r: r.fulfill(status=422, content_type="application/json", body=json.dumps(
            {"error": {"code": "invalid", "message": "rejected", "fields": [{"field": "token", "message": "rejected"}]}})))
        page.get_by_role("button", name="Rotate", exact=True).click()
        page.locator("#f-token").fill(SECRETS["bearer_bad"])
        rotate.get_by_role("button", name="Rotate", exact=True).click()
        expect(page.locator("#err-token")).to_be_visible()
        page.get_by_role("button", name="Cancel", exact=True).click()
        expect(page.locator("#f-token")).to_have_count(0)
        page.unroute("**/rotate")
        page_secrets(page, "the detail page after a refused rotation and Cancel")
        expected.add(("POST", f"/api/credentials/{cid}/rotate", 422))
        watch.check_responses()

    with section("secrets: a create refused by the server, then navigation away, leaves nothing"):
        choose_type(page, "bearer_token")
        page.locator("#f-token").fill(SECRETS["bearer_error"])
        page.locator("#f-test_url").fill("ftp://x")
        by_label(page, "Name").fill("rejected-then-left")
        submit(page)
        expect(page.locator("#err-test_url")).to_be_visible()
        page.locator("#nav").get_by_role("link", name="Credentials", exact=True).click()
        expect(page.locator("h1")).to_have_text("Credentials")
        expect(page.locator("#f-token")).to_have_count(0)
        page_secrets(page, "the list after leaving a refused add form")

    with section("secrets: Sign out leaves no token in the page, the input or storage"):
        page.get_by_role("button", name="Sign out", exact=True).click()
        field = page.get_by_label("API token", exact=True)
        expect(field).to_be_visible()
        check(field.input_value() == "", "the sign-in input is not empty after Sign out")
        stored = page.evaluate("() => JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])")
        check(ALICE not in stored and ALICE not in page.content() and ALICE not in page.url,
              "the token is still in storage, the page or the URL after Sign out")
        check(page.locator("#nav a").count() == 0, "the navigation is still shown after Sign out")
        page_secrets(page, "the sign-in page after Sign out")
        sign_in(page, ALICE)
    return expected


def attack_sections(browser, types, service, bearer, created):
    """Hostile strings (real and intercepted), hash-route tricks, /ui/ paths, the session's
    end, accessibility, keyboard use and 375 px pages, each in its own browser context."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(10_000)
    page = ctx.new_page()
    watch = Watch()
    watch.attach(page, [True])
    actx = browser.new_context(viewport={"width": 1280, "height": 800})
    actx.set_default_timeout(10_000)
    apage = actx.new_page()
    awatch = Watch()
    awatch.attach(apage, [True])

    with section("attack: /ui/ paths (.., %2e%2e, trailing /, query) and the / redirect"):
        for path in ["/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml", "/ui/..%2fCargo.toml", "/ui/%2e%2e%2fsrc%2fmain.rs",
                     "/ui/index.html/", "/ui/.", "/ui//etc/passwd", "//example.com/", "/ui/app.js/x"]:
            status, headers, body = raw_get(path)
            check(status == 404 and headers.get("content-type", "").startswith("application/json"),
                  f"GET {path}: {status} {headers.get('content-type')!r}")
        status, headers, body = raw_get("/ui/app.js?x=%3Cscript%3E")
        check(status == 200 and headers.get("content-security-policy") == CSP and b"import" in body,
              f"GET /ui/app.js?x: {status}, CSP {headers.get('content-security-policy')!r}")
        for name in ["index.html", "app.css", "icon.svg", "core.js", "app.js", "list.js", "form.js", "detail.js", "admin.js"]:
            status, headers, _ = raw_get("/ui/" + name)
            check(status == 200 and headers.get("content-security-policy") == CSP
                  and headers.get("x-content-type-options") == "nosniff",
                  f"/ui/{name}: {status}, CSP {headers.get('content-security-policy')!r}")
        for path in ["/", "/ui"]:
            status, headers, _ = raw_get(path)
            check(status in (301, 302, 303, 307, 308) and headers.get("location") == "/ui/",
                  f"GET {path}: {status} Location {headers.get('location')!r}")

    with section("attack: hostile facts, summaries, labels, audit and plugin problems render as text"):
        for _ in range(100):  # the plugin directory's type is loaded shortly after start
            if any(t["id"] == "hostile" for t in api_ok("GET", "/api/credential-types")):
                break
            time.sleep(0.1)
        made = {}
        for mode in ["report", "echo"]:
            status, view = api("POST", "/api/credentials", body={
                "type": "hostile", "name": f"<img src=x onerror=window.__xss=6>{mode}",
                "description": "<iframe src=javascript:window.__xss=7>", "tags": ["<svg onload=window.__xss=8>"],
                "fields": {"mode": mode, "secret": NEVER["hostile_secret"], "target_url": f"{service.base}/{mode}"}})
            check(status == 201, f"API: creating the hostile {mode} credential answered {status}: {redact(view)}")
            made[mode] = view["id"]
        # Grants need a type that can be proxied: on the bearer_token credential.
        status, grant = api("POST", f"/api/credentials/{bearer[0]}/grants", body={
            "label": "<img src=x onerror=window.__xss=9>", "ttl_secs": 600, "path_prefixes": ["/<svg onload=window.__xss=10>"]})
        if status != 201:  # a path prefix with HTML may be refused: the label alone then
            status, grant = api("POST", f"/api/credentials/{bearer[0]}/grants", body={
                "label": "<img src=x onerror=window.__xss=9>", "ttl_secs": 600})
        check(status == 201, f"API: the hostile grant answered {status}")
        status, issued = api("POST", "/api/admin/users/alice/tokens", token=ROOT,
                             body={"label": "<img src=x onerror=window.__xss=11>"})
        check(status == 201, f"API: the hostile token label answered {status}")
        sign_in(page, ALICE)
        n = len(watch.dialogs)
        for mode, needle in [("report", "<script>window.__xss=2</script>value"), ("echo", XSS_SUMMARY)]:
            page.goto(UI + f"#/credentials/{made[mode]}")
            expect(page.locator("h1")).to_contain_text("onerror")
            page.get_by_role("button", name="Test", exact=True).click()
            expect(page.locator("#test-result")).to_contain_text(needle)
            expect(page.locator("#sec-history")).to_contain_text("status" if mode == "report" else "echo:")
            no_xss(page, watch, f"the {mode} credential's page after Test", n)
        page.goto(UI + f"#/credentials/{bearer[0]}")
        expect(page.locator("#sec-grants")).to_contain_text("window.__xss=9")
        expect(page.locator("#sec-audit tbody tr").first).to_be_visible()
        no_xss(page, watch, "a credential with a hostile grant label, and its audit", n)
        page.goto(UI + "#/credentials?name_prefix=" + urllib.request.quote("<img", safe=""))
        expect(page.locator(f"tr[data-id='{made['echo']}']")).to_be_visible()
        no_xss(page, watch, "the list of hostile names", n)
        page.goto(UI + "#/tokens")
        expect(page.locator("#token-list")).to_contain_text("window.__xss=11")
        no_xss(page, watch, "My tokens with a hostile label", n)
        sign_in(apage, ROOT)
        apage.goto(UI + "#/admin/plugins")
        expect(apage.locator("#plugin-list")).to_contain_text("window.__xss=20")
        expect(apage.locator("#plugin-list")).to_contain_text("hostile")
        no_xss(apage, awatch, "the Plugins page with a hostile plugin file", 0)
        apage.goto(UI + "#/admin/tokens?user=alice")
        expect(apage.locator("#token-list")).to_contain_text("window.__xss=11")
        no_xss(apage, awatch, "All tokens with a hostile label", 0)
        watch.check_responses()

    with section("attack: hostile type descriptors, field values, versions, audit, users (intercepted answers)"):
        real_types = api_ok("GET", "/api/credential-types")
        types_url, fake_url, audit_url = (re.compile(r"/api/credential-types$"), re.compile(f"/api/credentials/{FAKE_ID}"),
                                          re.compile(r"/api/audit\?"))
        page.route(types_url, lambda r: r.fulfill(json=real_types + [evil_type()]))
        page.route(fake_url, lambda r: r.fulfill(json=fake_answer(r.request.url.split("?")[0])))
        page.route(audit_url, lambda r: r.fulfill(json={"items": [
            {"at": "2026-12-01T10:00:00Z", "actor": EVIL, "action": EVIL, "outcome": EVIL, "detail": EVIL}], "next_cursor": None}))
        page.reload()
        n = len(watch.dialogs)
        page.goto(UI + "#/add?type=evil")
        expect(page.locator("#f-plain")).to_be_visible()
        expect(page.locator("#type-about")).to_contain_text("<script>")
        check(page.locator("#f-link").input_value() == "javascript:window.__xss=48", "the url default is not shown as typed")
        no_xss(page, watch, "the add form of a hostile descriptor", n)
        a11y(page, "the add form of a hostile descriptor")
        page.goto(UI + f"#/credentials/{FAKE_ID}")
        expect(page.locator("h1")).to_have_text(EVIL + "name")
        expect(page.locator("#sec-audit")).to_contain_text(EVIL)
        expect(page.locator("#sec-versions")).to_contain_text(EVIL)
        expect(page.locator("#sec-grants")).to_contain_text(EVIL)
        expect(page.locator("#sec-history")).to_contain_text(EVIL)
        check(page.locator("#health").get_attribute("data-health") == "untested", "an unknown health is not shown as untested")
        no_xss(page, watch, "the detail page of a hostile credential", n)
        page.get_by_role("button", name="Edit", exact=True).click()
        expect(page.locator("#f-plain")).to_have_value(EVIL)
        no_xss(page, watch, "the edit form of a hostile credential", n)
        a11y(page, "the edit form of a hostile credential")
        for url in (types_url, fake_url, audit_url):
            page.unroute(url)
        page.reload()  # forgets the cached hostile descriptor
        users_url, tokens_url = re.compile(r"/api/admin/users$"), re.compile(r"/api/admin/tokens(\?|$)")
        apage.route(users_url, lambda r: r.fulfill(json=[
            {"name": EVIL, "role": EVIL, "namespace": EVIL, "created_at": "2026-12-01T10:00:00Z"}]) if r.request.method == "GET" else r.continue_())
        apage.route(tokens_url, lambda r: r.fulfill(json=[
            {"id": '"><img src=x onerror=window.__xss=54>', "user": EVIL, "role": "admin", "kind": "grant",
             "credential": "javascript:window.__xss=55", "label": EVIL, "scopes": [EVIL], "state": EVIL,
             "created_at": "2026-12-01T10:00:00Z", "expires_at": None, "current": False}]))
        apage.goto(UI + "#/admin/users")
        expect(apage.locator("#user-list")).to_contain_text(EVIL)
        no_xss(apage, awatch, "Users with a hostile user name", 0)
        apage.goto(UI + "#/admin/tokens")
        expect(apage.locator("#token-list")).to_contain_text(EVIL)
        href = apage.locator("#token-list a").first.get_attribute("href")
        check(href == "#/credentials/javascript%3Awindow.__xss%3D55", f"a token's credential link is {href!r}")
        no_xss(apage, awatch, "All tokens with hostile records", 0)
        apage.unroute(users_url)
        apage.unroute(tokens_url)

    with section("attack: hash-route tricks stay on /api/, render text, run nothing"):
        page.goto(UI + "#/credentials")
        expect(page.locator("h1")).to_have_text("Credentials")
        first = len(watch.requests)
        cid, name = bearer
        cases = [
            ("#/credentials/..%2f..%2fadmin%2fusers", "Not found"),
            ("#/credentials/%2e%2e", "Not found"),
            ("#/credentials/..", "Not found"),
            ("#/credentials/.", "Not found"),
            ("#/credentials/%E0%A4%A", "Not found"),
            ("#/credentials/%", "Not found"),
            (f"#/credentials/{cid}?x=<script>window.__xss=60</script>&__proto__=1&constructor=2", name),
            ("#/credentials/" + "a" * 20000, None),
            ("#/add?type=<script>window.__xss=61</script>", "Add credential"),
            ("#/credentials?name_prefix=<img src=x onerror=window.__xss=62>&cursor=%ZZ&health=<b>", "Credentials"),
            ("#/admin/users", "Admins only"),
            ("#/admin/tokens?user=..", "Admins only"),
            ("#main", "Not found"),
            ("#/nope/<img src=x onerror=window.__xss=63>", "Not found"),
        ]
        for hash_, heading in cases:
            page.goto(UI + hash_)
            if heading is None:
                expect(page.locator("#main h1")).to_have_text(re.compile("^(Not found|Credential|Something went wrong)$"))
            else:
                expect(page.locator("#main h1")).to_have_text(heading)
            no_xss(page, watch, f"the page for {hash_[:60]}")
        for method, url in watch.requests[first:]:
            check("/api/admin/" not in url, f"alice's console called {method} {url[:120]}")
            path = url.replace(BASE, "").split("?")[0]
            if not path.startswith("/api/"):
                continue  # /ui/ files (check_urls below checks every URL's origin and path)
            # A "." or ".." id would have been resolved by the browser to another endpoint.
            check(path.startswith(("/api/credentials", "/api/tokens", "/api/credential-types", "/api/audit"))
                  and path not in ("/api/credentials/", "/api/test") and not re.match(r"^/api/credentials/(test|grants|versions)?$", path),
                  f"a hash trick reached {method} {path[:120]}")
        watch.check_urls()
        page_problems(watch)

    with section("session: a token revoked while signed in ends the session once, with a message"):
        sctx = browser.new_context(viewport={"width": 1280, "height": 800})
        sctx.set_default_timeout(10_000)
        spage = sctx.new_page()
        swatch = Watch()
        swatch.attach(spage, [True])
        second = api_ok("POST", "/api/admin/users/alice/tokens", token=ROOT, body={"label": "console-session-test"})
        TOKENS["alice's second token"] = second["token"]
        sign_in(spage, second["token"])
        expect(spage.locator("tr[data-id]").first).to_be_visible()
        api_ok("DELETE", f"/api/admin/tokens/{second['token_id']}", token=ROOT)
        spage.get_by_role("button", name="Refresh", exact=True).click()
        expect(spage.get_by_label("API token", exact=True)).to_be_visible()
        wait_hash(spage, r"^#/signin")
        expect_session_ended(spage, swatch, "after Refresh")
        expect(spage.get_by_role("button", name="Sign out", exact=True)).to_have_count(0)
        before = len(swatch.requests)
        spage.wait_for_timeout(700)
        check(len(swatch.requests) == before, f"{len(swatch.requests) - before} requests after the session ended (a loop?)")
        check(spage.evaluate("() => sessionStorage.length") == 0, "the revoked token is still in sessionStorage")
        spage.get_by_label("API token", exact=True).fill(second["token"])
        spage.get_by_role("button", name="Sign in", exact=True).click()
        expect(spage.locator("#token-error")).to_contain_text("not valid")
        a11y(spage, "the sign-in page", tabs=3)
        # Revoked while the tab was away: a reload says so too.
        third = api_ok("POST", "/api/admin/users/alice/tokens", token=ROOT, body={"label": "console-reload-test"})
        TOKENS["alice's third token"] = third["token"]
        sign_in(spage, third["token"])
        api_ok("DELETE", f"/api/admin/tokens/{third['token_id']}", token=ROOT)
        spage.reload()
        expect(spage.get_by_label("API token", exact=True)).to_be_visible()
        expect_session_ended(spage, swatch, "after a reload")
        check(spage.evaluate("() => sessionStorage.length") == 0, "a revoked token stayed in sessionStorage after a reload")
        page_problems(swatch)
        swatch.check_urls()
        sctx.close()

    with section("session: a user's console on admin pages says so and calls no admin API"):
        first = len(watch.requests)
        for hash_ in ["#/admin/users", "#/admin/tokens", "#/admin/plugins"]:
            page.goto(UI + hash_)
            expect(page.locator("#main h1")).to_have_text("Admins only")
            a11y(page, f"alice on {hash_}")
        page.reload()  # a fresh start on an admin page
        expect(page.locator("#main h1")).to_have_text("Admins only")
        calls = [u for _, u in watch.requests[first:] if "/api/admin/" in u]
        check(not calls, f"admin API calls from a user's console: {calls[:3]}")

    with section("accessibility: labels, names, tabindex, headings, ids, focus on every page"):
        cid, name = bearer
        page.goto(UI + "#/credentials")
        expect(page.locator("tr[data-id]").first).to_be_visible()
        a11y(page, "the list", tabs=12)
        page.goto(UI + "#/tokens")
        expect(page.locator("#token-list table")).to_be_visible()
        a11y(page, "My tokens")
        for type_id in types:
            page.goto(UI + f"#/add?type={type_id}")
            expect(page.locator("fieldset.type-fieldset")).to_be_visible()
            a11y(page, f"the {type_id} add form", tabs=6 if type_id == "bearer_token" else 0)
        page.goto(UI + f"#/credentials/{cid}")
        expect(page.locator("h1")).to_have_text(name)
        expect(page.locator("#sec-versions table")).to_be_visible()
        a11y(page, "the detail page", tabs=10)
        for button, form in [("Edit", "form.detail-form"), ("Replace secret", "form.detail-form"),
                             ("Rotate", "form.detail-form"), ("Create grant", "form.grant-form")]:
            page.get_by_role("button", name=button, exact=True).first.click()
            expect(page.locator(form)).to_be_visible()
            a11y(page, f"the detail page with {button} open")
        for hash_, ready in [("#/admin/users", "#user-list table"), ("#/admin/tokens", "#token-list table"),
                             ("#/admin/plugins", "#plugin-list table")]:
            apage.goto(UI + hash_)
            expect(apage.locator(ready)).to_be_visible()
            a11y(apage, hash_, tabs=8)
        # "Skip to content" focuses the page and keeps the route.
        apage.goto(UI + "#/admin/plugins")
        apage.reload()  # focus starts at the top of the document
        expect(apage.locator("#plugin-list table")).to_be_visible()
        apage.keyboard.press("Tab")
        check(apage.evaluate("() => document.activeElement.className") == "skip", "the first Tab does not reach Skip to content")
        apage.keyboard.press("Enter")
        apage.wait_for_timeout(100)
        check(hash_of(apage) == "#/admin/plugins", f"Skip to content changed the route to {hash_of(apage)!r}")
        check(apage.evaluate("() => document.activeElement.id") == "main", "Skip to content did not focus the page")
        expect(apage.locator("#main h1")).to_have_text("Plugins")

    with section("keyboard only: create a bearer_token credential (Tab, arrows, typing, Enter)"):
        page.goto(UI + "#/credentials")
        expect(page.locator("h1")).to_have_text("Credentials")
        page.goto(UI + "#/add")
        expect(page.locator("#cred-type")).to_be_visible()
        tab_to(page, "cred-type")
        for _ in range(12):
            if page.locator("#cred-type").input_value() == "bearer_token":
                break
            page.keyboard.press("ArrowDown")
        check(page.locator("#cred-type").input_value() == "bearer_token", "arrow keys never chose bearer_token")
        expect(page.locator("#f-token")).to_be_visible()
        kname = "keyboard-made"
        for element_id, text in [("cred-name", kname), ("cred-tags", "kbd"), ("f-token", SECRETS["bearer_plain"]),
                                 ("f-test_url", service.url)]:
            tab_to(page, element_id)
            page.keyboard.type(text)
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_have_text(kname)
        wait_hash(page, r"^#/credentials/[^/?]+$")
        kid = hash_of(page).split("/")[2]
        view = api_ok("GET", f"/api/credentials/{kid}")
        check(view["fields"]["token"].get("set") is True and view["tags"] == ["kbd"], f"API: {redact(view)[:200]}")
        page_secrets(page, "the detail page after a keyboard create")

    with section("375 px: detail with forms open, tokens, admin pages, a hostile add form"):
        cid, name = bearer
        page.set_viewport_size({"width": 375, "height": 800})
        apage.set_viewport_size({"width": 375, "height": 800})
        page.goto(UI + f"#/credentials/{cid}")
        expect(page.locator("#sec-versions table")).to_be_visible()
        page.get_by_role("button", name="Create grant", exact=True).click()
        page.get_by_role("button", name="Edit", exact=True).click()
        expect(page.locator("form.grant-form")).to_be_visible()
        expect(page.locator("#sec-audit table")).to_be_visible()
        no_hscroll(page, "the detail page with the edit and grant forms open")
        page.screenshot(path=os.path.join(SHOTS, "narrow-detail.png"), full_page=True)
        page.goto(UI + "#/tokens")
        expect(page.locator("#token-list table")).to_be_visible()
        no_hscroll(page, "My tokens")
        page.goto(UI + "#/add?type=hostile")
        expect(page.locator("#f-target_url")).to_be_visible()
        no_hscroll(page, "the hostile add form")
        for hash_, ready in [("#/admin/users", "#user-list table"), ("#/admin/tokens", "#token-list table"),
                             ("#/admin/plugins", "#plugin-list table")]:
            apage.goto(UI + hash_)
            expect(apage.locator(ready)).to_be_visible()
            no_hscroll(apage, hash_)
        apage.screenshot(path=os.path.join(SHOTS, "narrow-admin-plugins.png"), full_page=True)

    with section("attack contexts: no page error, no CSP report, every URL on /api/ or /ui/ without a secret"):
        page_problems(watch)
        page_problems(awatch)
        watch.check_urls()
        awatch.check_urls()
        watch.check_responses()
        awatch.check_responses()
    ctx.close()
    actx.close()


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

        rotate_expected = secrets_sections(page, watch, bearer)

        # 8 (second half): no CSP violation and no JS error in alice's session.
        with section("no CSP violation, no JavaScript error (user session)"):
            say(f"     ({len(watch.console)} console messages, {len(watch.errors)} page errors, "
                f"{watch.checked} API answers checked for secrets, {service.hits} calls to the local service)")
            expected = {("GET", "/api/tokens", 401), ("POST", "/api/credentials", 422)}
            problems(watch, expected | rotate_expected)
            watch.check_urls()
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
            awatch.check_urls()

        attack_sections(browser, types, service, bearer, created)

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
