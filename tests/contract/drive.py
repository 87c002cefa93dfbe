"""Drives every operation of credhost's OpenAPI document through a client generated from
it by openapi-python-client (tests/api_contract.rs generates the client and runs this).

The client raises on any status the document does not list, and parses every body with
the document's schemas, so a route that answers something undocumented fails here.

Usage: drive.py CLIENT_PARENT_DIR BASE_URL ADMIN_TOKEN
Prints one line per operation; exits non-zero with the first mismatch.
"""

import base64
import http.server
import importlib
import json
import os
import pkgutil
import secrets
import shutil
import sys
import tempfile
import threading
import uuid

sys.path.insert(0, sys.argv[1])
BASE, ROOT = sys.argv[2], sys.argv[3]

import credhost_client  # noqa: E402  (generated; found through sys.path above)
from credhost_client import AuthenticatedClient, Client  # noqa: E402
from credhost_client.api import admin, audit, credentials, grants, health, tokens, types, use, webhooks  # noqa: E402
from credhost_client import models as m  # noqa: E402
from credhost_client.types import UNSET  # noqa: E402

# Importing a submodule makes it an attribute of its package (`credentials.get_credential`).
for _pkg in (admin, audit, credentials, grants, health, tokens, types, use, webhooks):
    for _, _name, _ in pkgutil.iter_modules(_pkg.__path__):
        importlib.import_module(f"{_pkg.__name__}.{_name}")

called = set()
UPSTREAM_TOKEN = "up-" + secrets.token_hex(16)


def client(token=None):
    if token is None:
        return Client(base_url=BASE, raise_on_unexpected_status=True)
    return AuthenticatedClient(base_url=BASE, token=token, raise_on_unexpected_status=True)


def call(op, status, *args, **kwargs):
    """Calls `op.sync_detailed`, checks the status and the body's shape, returns the response."""
    r = op.sync_detailed(*args, **kwargs)
    name = op.__name__.rsplit(".", 1)[1]
    called.add(name)
    got = int(r.status_code)
    body = r.content.decode("utf-8", "replace")
    assert got == status, f"{name}: expected {status}, got {got}: {body}"
    if got >= 400:
        assert isinstance(r.parsed, m.ErrorBody), f"{name}: {got} body is not the error shape: {body}"
        assert r.parsed.error.code and r.parsed.error.message, f"{name}: {body}"
    if got == 401:
        assert r.headers.get("www-authenticate") == "Bearer", f"{name}: 401 without WWW-Authenticate: {r.headers}"
    if got == 201:
        assert r.headers.get("location", "").startswith("/api/"), f"{name}: 201 without Location: {r.headers}"
    if got == 503:
        assert r.headers.get("retry-after"), f"{name}: 503 without Retry-After"
    print(f"{name} {got}")
    return r


def audit_snapshot(c):
    """The caller's audit records as JSON text (a list, or a page of them)."""
    parsed = call(audit.list_audit_records, 200, client=c, limit=1000).parsed
    return json.dumps(parsed.to_dict() if hasattr(parsed, "to_dict") else [a.to_dict() for a in parsed])


def fields(r):
    return [f.field for f in (r.parsed.error.fields or [])]


class Upstream(http.server.BaseHTTPRequestHandler):
    """The service a bearer-token credential stands for: 200 with the right token only."""

    def do_GET(self):
        ok = self.headers.get("Authorization") == f"Bearer {UPSTREAM_TOKEN}"
        body = json.dumps({"ok": ok, "path": self.path}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def main():
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_url = f"http://127.0.0.1:{upstream.server_address[1]}/ping"

    anon, root = client(), client(ROOT)

    # Health, readiness, metrics and the document itself: no token.
    assert call(health.get_health, 200, client=anon).parsed.status == "ok"
    assert call(health.get_readiness, 200, client=anon).parsed.ready is True
    assert "credhost" in call(health.get_metrics, 200, client=anon).content.decode()
    assert json.loads(call(health.get_openapi, 200, client=anon).content)["openapi"].startswith("3.")
    kinds = [t.id for t in call(types.list_credential_types, 200, client=anon).parsed]
    assert "bearer_token" in kinds and "db_dsn" in kinds, kinds

    # Admin: users and tokens.
    alice_name = "alice-" + secrets.token_hex(4)
    r = call(admin.create_user, 201, client=root, body=m.NewUser.from_dict({"name": alice_name}))
    assert r.headers["location"] == f"/api/admin/tokens/{r.parsed.token_id}", r.headers
    alice = client(r.parsed.token)
    call(admin.create_user, 409, client=root, body=m.NewUser.from_dict({"name": alice_name}))
    call(admin.create_user, 403, client=alice, body=m.NewUser.from_dict({"name": "mallory"}))
    call(admin.create_user, 401, client=client("chst_not-a-token"), body=m.NewUser.from_dict({"name": "x"}))
    # No body at all: the body is optional.
    spare = call(admin.create_token, 201, alice_name, client=root, body=UNSET).parsed
    revealer = call(admin.create_token, 201, alice_name, client=root,
                    body=m.NewToken.from_dict({"label": "reveal", "scopes": ["read", "reveal"]})).parsed
    r = call(admin.create_token, 422, alice_name, client=root, body=m.NewToken.from_dict({"expires_in_secs": 0}))
    assert "expires_in_secs" in fields(r), r.content
    call(admin.create_token, 404, "nobody-" + secrets.token_hex(4), client=root, body=UNSET)
    assert alice_name in [u.name for u in call(admin.list_users, 200, client=root).parsed]
    assert spare.token_id in [t.id for t in call(admin.list_tokens, 200, client=root, user=alice_name).parsed]
    call(admin.list_tokens, 404, client=root, user="nobody-" + secrets.token_hex(4))
    assert call(admin.list_plugins, 200, client=root).parsed is not None
    call(admin.list_plugins, 403, client=alice)
    call(admin.reload_plugins, 200, client=root)
    # Master-key rotation: the server reads the new key from a private file (never the request).
    keydir = tempfile.mkdtemp()
    newkey = os.path.join(keydir, "next.key")
    fd = os.open(newkey, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(secrets.token_bytes(32)))
    os.close(fd)
    call(admin.rotate_master_key, 403, client=alice, body=m.RotateKeys.from_dict({"new_key_file": newkey}))
    r = call(admin.rotate_master_key, 422, client=root, body=m.RotateKeys.from_dict({"new_key_file": newkey + ".missing"}))
    assert "new_key_file" in fields(r), r.content
    r = call(admin.rotate_master_key, 200, client=root, body=m.RotateKeys.from_dict({"new_key_file": newkey})).parsed
    assert r.namespaces >= 1 and r.key_id != r.previous_key_id, r
    shutil.rmtree(keydir)

    # Credentials.
    r = call(credentials.create_credential, 201, client=alice, body=m.CreateCredential.from_dict({
        "name": "up", "type": "bearer_token", "tags": ["contract"],
        "fields": {"token": UPSTREAM_TOKEN, "test_url": up_url},
    }))
    cred = r.parsed
    assert r.headers["location"] == f"/api/credentials/{cred.id}", r.headers
    cid = cred.id
    call(credentials.create_credential, 409, client=alice, body=m.CreateCredential.from_dict({
        "name": "up", "type": "bearer_token", "fields": {"token": UPSTREAM_TOKEN, "test_url": up_url},
    }))
    r = call(credentials.create_credential, 422, client=alice, body=m.CreateCredential.from_dict({
        "name": "bad", "type": "bearer_token", "fields": {"token": UPSTREAM_TOKEN, "test_url": "ftp://x/"},
    }))
    assert "test_url" in fields(r), r.content
    call(credentials.create_credential, 401, client=client("chst_nope"),
         body=m.CreateCredential.from_dict({"name": "x", "type": "bearer_token"}))
    # Numbers and booleans are field values too (the schema says string|number|boolean).
    notest = call(credentials.create_credential, 201, client=alice, body=m.CreateCredential.from_dict({
        "name": "no-test-url", "type": "bearer_token", "fields": {"token": UPSTREAM_TOKEN},
    })).parsed

    assert call(credentials.get_credential, 200, cid, client=alice).parsed.name == "up"
    call(credentials.get_credential, 404, uuid.uuid4(), client=alice)
    page = call(credentials.list_credentials, 200, client=alice, tag="contract", limit=10).parsed
    assert [c.name for c in page.items] == ["up"], page.to_dict()

    # A PATCH that changes nothing writes nothing.
    before = call(credentials.get_credential, 200, cid, client=alice).parsed
    audit_before = audit_snapshot(alice)
    same = call(credentials.update_credential, 200, cid, client=alice,
                body=m.UpdateCredential.from_dict({"name": "up", "tags": ["contract"], "fields": {}})).parsed
    assert same.updated_at == before.updated_at, (same.updated_at, before.updated_at)
    assert audit_snapshot(alice) == audit_before, "a no-op PATCH wrote an audit record"
    call(credentials.update_credential, 409, cid, client=alice,
         body=m.UpdateCredential.from_dict({"name": "no-test-url"}))
    changed = call(credentials.update_credential, 200, cid, client=alice,
                   body=m.UpdateCredential.from_dict({"description": "changed"})).parsed
    assert changed.description == "changed"

    assert call(credentials.validate_credential, 200, cid, client=alice).parsed.valid is True
    t = call(credentials.test_credential, 200, cid, client=alice).parsed
    assert t.ok is True and t.status.value == "valid", t.to_dict()
    # Nothing to test against: a verdict with the reason, not a server error.
    t = call(credentials.test_credential, 200, notest.id, client=alice).parsed
    assert t.ok is False and t.status.value == "indeterminate" and "test_url" in t.summary, t.to_dict()
    # Test history (monitoring): newest first, with the trigger; the health filter.
    h = call(credentials.list_credential_tests, 200, cid, client=alice).parsed
    assert h.items and h.items[0].trigger == "manual" and h.items[0].status == "valid", h.to_dict()
    call(credentials.list_credential_tests, 404, uuid.uuid4(), client=alice)
    healthy = call(credentials.list_credentials, 200, client=alice, health="valid").parsed
    assert cid in [c.id for c in healthy.items] and all(c.health == "valid" for c in healthy.items), healthy.to_dict()

    # Versions and rotation: a token the upstream refuses stays pending, the current one stays.
    refused = m.RotateRequest.from_dict({"fields": {"token": "up-" + secrets.token_hex(16)}})
    r = call(credentials.rotate_credential, 200, cid, client=alice, body=refused, idempotency_key="contract-1")
    assert r.parsed.result == "failed" and r.parsed.current_version == 1, r.content
    again = call(credentials.rotate_credential, 200, cid, client=alice, body=refused, idempotency_key="contract-1")
    assert again.parsed.to_dict() == r.parsed.to_dict(), (again.content, r.content)
    r = call(credentials.rotate_credential, 409, cid, client=alice, idempotency_key="contract-1",
             body=m.RotateRequest.from_dict({"fields": {"token": "up-" + secrets.token_hex(16)}}))
    r = call(credentials.rotate_credential, 422, cid, client=alice,
             body=m.RotateRequest.from_dict({"fields": {"test_url": up_url}}))
    assert "test_url" in fields(r), r.content
    vs = call(credentials.list_credential_versions, 200, cid, client=alice).parsed
    assert vs.current == 1 and vs.pending == 2, vs.to_dict()
    assert [v.state for v in vs.items] == ["pending", "current"], vs.to_dict()
    call(credentials.list_credential_versions, 404, str(uuid.uuid4()), client=alice)
    assert call(credentials.promote_credential_version, 200, cid, "1", client=alice).parsed.version == 1
    call(credentials.promote_credential_version, 404, cid, "99", client=alice)

    # Grants and the proxy.
    r = call(grants.create_grant, 201, cid, client=alice, body=m.NewGrant.from_dict({"ttl_secs": 600, "max_calls": 5}))
    grant = r.parsed
    assert r.headers["location"] == f"/api/credentials/{cred.id}/grants/{grant.grant_id}", r.headers
    r = call(grants.create_grant, 422, cid, client=alice, body=m.NewGrant.from_dict({"ttl_secs": 0}))
    assert "ttl_secs" in fields(r), r.content
    assert grant.grant_id in [g.grant_id for g in call(grants.list_grants, 200, cid, client=alice).parsed]
    agent = client(grant.token)
    r = call(use.use_credential, 200, cid, "ping", client=agent)
    assert json.loads(r.content)["ok"] is True, r.content
    call(use.use_credential, 401, cid, "ping", client=client())
    call(grants.revoke_grant, 200, cid, grant.grant_id, client=alice)
    call(use.use_credential, 403, cid, "ping", client=agent)

    # Reveal: needs the scope and a type that allows it.
    call(use.reveal_credential, 403, cid, client=alice)
    dsn = call(credentials.create_credential, 201, client=alice, body=m.CreateCredential.from_dict({
        "name": "db", "type": "db_dsn", "fields": {"dsn": f"postgres://u:{secrets.token_hex(8)}@db.example:5432/x"},
    })).parsed
    call(use.reveal_credential, 200, dsn.id, client=client(revealer.token))
    call(use.reveal_credential, 403, cid, client=client(revealer.token))

    # Webhooks: the caller's own subscriptions; a bad URL names `url`.
    hook_url = f"http://127.0.0.1:{upstream.server_address[1]}/hook"
    r = call(webhooks.create_webhook, 201, client=alice,
             body=m.NewWebhook.from_dict({"url": hook_url, "events": ["credential.*", "webhook.ping"]}))
    hook = r.parsed
    assert hook.secret.startswith("whsec_") and r.headers["location"] == f"/api/webhooks/{hook.id}", r.content
    r = call(webhooks.create_webhook, 422, client=alice, body=m.NewWebhook.from_dict({"url": "ftp://x/"}))
    assert "url" in fields(r), r.content
    assert hook.id in [w.id for w in call(webhooks.list_webhooks, 200, client=alice).parsed]
    assert call(webhooks.get_webhook, 200, hook.id, client=alice).parsed.url == hook_url
    call(webhooks.get_webhook, 404, hook.id, client=root)
    assert call(webhooks.ping_webhook, 202, hook.id, client=alice).parsed.event_id.startswith("evt_")
    call(webhooks.list_webhook_deliveries, 200, hook.id, client=alice)
    call(webhooks.delete_webhook, 204, hook.id, client=alice)
    call(webhooks.delete_webhook, 404, hook.id, client=alice)
    call(webhooks.list_webhook_deliveries, 404, hook.id, client=alice)
    call(webhooks.ping_webhook, 404, hook.id, client=alice)

    # Audit.
    call(audit.list_audit_records, 200, client=alice, limit=5)
    call(audit.list_audit_records, 403, client=alice, user="root")

    # Own tokens.
    assert spare.token_id in [t.id for t in call(tokens.list_own_tokens, 200, client=alice).parsed]
    call(tokens.revoke_own_token, 204, spare.token_id, client=alice)
    call(tokens.revoke_own_token, 404, spare.token_id + "x", client=alice)

    # Delete, restore, purge.
    nid = notest.id
    call(credentials.delete_credential, 204, nid, client=alice)
    call(credentials.get_credential, 404, nid, client=alice)
    assert call(credentials.get_credential, 200, nid, client=alice, include_deleted=True).parsed.deleted_at
    call(credentials.restore_credential, 200, nid, client=alice)
    call(credentials.delete_credential, 204, nid, client=alice, purge=True)
    call(credentials.restore_credential, 404, nid, client=alice)

    call(admin.revoke_token, 204, revealer.token_id, client=root)
    call(admin.revoke_token, 404, revealer.token_id + "x", client=root)

    # Every operation the document has was driven.
    every = {
        name
        for pkg in (admin, audit, credentials, grants, health, tokens, types, use, webhooks)
        for _, name, _ in pkgutil.iter_modules(pkg.__path__)
    }
    generated = {
        name
        for _, tag, _ in pkgutil.iter_modules(importlib.import_module("credhost_client.api").__path__)
        for _, name, _ in pkgutil.iter_modules(importlib.import_module(f"credhost_client.api.{tag}").__path__)
    }
    missing = (every | generated) - called
    assert not missing, f"operations not driven: {sorted(missing)}"
    print(f"drove {len(called)} operations")
    upstream.shutdown()


main()
