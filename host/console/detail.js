// The credential detail page (`#/credentials/:id`): what it is and how healthy, its
// fields (secrets only as "set · fingerprint"), and what can be done with it: test, edit,
// replace or rotate its secret, roll back, delete/restore/purge, its test history,
// versions, audit records and grants. Every value from the API is rendered as text.

import { actionButton, api, badge, copy, errorBox, fmtTime, go, h, notice, query, replace, route, seg, session, spinner, types } from "./core.js";
import { commonControls, fieldControl, showErrors } from "./form.js";

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const AUDIT_PAGE = 20;

route("#/credentials/:id", async ({ id }, main, isCurrent) => {
  const page = new DetailPage(id, main, isCurrent);
  await page.start();
});

/** One table with stacked rows on narrow screens (`data-label` on every cell). */
function table(caption, headers, rows) {
  return h(
    "table",
    { class: "stack" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t || h("span", { class: "visually-hidden" }, "Actions"))))),
    h("tbody", {}, rows),
  );
}

function cell(label, ...children) {
  return h("td", { dataset: { label } }, ...children);
}

/** A test verdict as a coloured word (valid / invalid / indeterminate). */
function statusWord(status) {
  const known = ["valid", "invalid", "indeterminate"].includes(status) ? status : "indeterminate";
  return h("span", { class: `badge status-word badge-${known}`, dataset: { status: String(status) } }, String(status));
}

/** Facts (`{name: text}`) as a definition list. */
function factsList(facts) {
  const entries = Object.entries(facts || {});
  return h(
    "dl",
    { class: "meta facts" },
    entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]),
  );
}

function isSecretValue(v) {
  return v !== null && typeof v === "object";
}

/** A field's shown value: text for plain values, "set · fingerprint" for secrets. */
function fieldValue(v, secret) {
  if (secret || isSecretValue(v)) {
    if (isSecretValue(v) && v.set) return ["set", v.fingerprint ? [" · ", h("code", {}, String(v.fingerprint))] : null];
    return h("span", { class: "muted" }, "not set");
  }
  if (v === null || v === undefined || v === "") return h("span", { class: "muted" }, "—");
  return h("span", { class: "mono" }, String(v));
}

function section(title, id, ...children) {
  return h("section", { class: "detail-section", "aria-labelledby": `${id}-title`, id }, h("h2", { id: `${id}-title` }, title), ...children);
}

function loading() {
  return h("p", { class: "muted" }, spinner(), " Loading…");
}

class DetailPage {
  constructor(id, main, isCurrent) {
    this.id = id;
    this.main = main;
    this.isCurrent = isCurrent;
    this.path = `/api/credentials/${seg(id)}`;
    this.cred = null;
    this.desc = null;
    this.openForm = null; // {kind, clear()} of the edit/replace/rotate form shown
    this.head = h("div", { class: "detail-head" });
    this.actions = h("div", { class: "actions detail-actions" });
    this.panel = h("div", { class: "detail-panel" });
    this.testResult = h("div", { id: "test-result", class: "test-result", "aria-live": "polite" });
    this.fields = h("div");
    this.history = h("div");
    this.versions = h("div");
    this.grants = h("div");
    this.grantArea = h("div");
    this.audit = h("div");
    this.seqs = {};
  }

  /** A guard for one section's load: false once the page changed or a newer load of
   *  the same section started (late answers are dropped). */
  fresh(name) {
    const n = (this.seqs[name] = (this.seqs[name] || 0) + 1);
    return () => this.isCurrent() && this.seqs[name] === n;
  }

  /** The credential, a soft-deleted one included (it can be restored or purged here). */
  async fetchCred() {
    return api("GET", query(this.path, { include_deleted: "true" }));
  }

  async start() {
    let cred;
    try {
      cred = await this.fetchCred();
    } catch (e) {
      if (!this.isCurrent()) return;
      if (e.status === 404 || e.status === 422) return this.notFound();
      replace(this.main, h("h1", {}, "Credential"), errorBox(e), h("p", {}, h("a", { href: "#/credentials" }, "Back to the list")));
      return;
    }
    let all = [];
    try {
      all = await types();
    } catch (e) {
      all = [];
    }
    if (!this.isCurrent()) return;
    this.cred = cred;
    this.desc = all.find((t) => t.id === cred.type) || null;
    replace(
      this.main,
      this.head,
      this.actions,
      this.panel,
      this.testResult,
      section("Fields", "sec-fields", this.fields),
      section("Test history", "sec-history", this.history),
      section("Versions", "sec-versions", this.versions),
      section("Grants", "sec-grants", this.grantArea, this.grants),
      section("Audit", "sec-audit", this.audit),
    );
    this.renderTop();
    this.loadSections();
  }

  notFound() {
    replace(
      this.main,
      h("h1", {}, "Not found"),
      h("p", {}, "There is no credential with this id (or it is not yours). ", h("a", { href: "#/credentials" }, "Back to the list")),
    );
  }

  /** Re-reads the credential and redraws the header, fields and buttons. */
  async refresh() {
    let cred;
    try {
      cred = await this.fetchCred();
    } catch (e) {
      if (!this.isCurrent()) return;
      if (e.status === 404) return this.notFound();
      notice(e.message, "error");
      return;
    }
    if (!this.isCurrent()) return;
    this.cred = cred;
    this.renderTop();
  }

  loadSections() {
    if (this.cred.deleted_at) {
      // A deleted credential has no tests, versions or grants to show until restored
      // (and late answers of earlier loads are dropped).
      ["history", "versions", "grants"].forEach((n) => this.fresh(n));
      for (const el of [this.history, this.versions, this.grants]) replace(el, h("p", { class: "muted" }, "Not available while the credential is deleted."));
      replace(this.grantArea);
    } else {
      this.loadHistory();
      this.loadVersions();
      this.loadGrants();
    }
    this.loadAudit(true);
  }

  /** The type's field specs, plus any stored field the descriptor does not know. */
  specs() {
    const known = (this.desc && this.desc.fields) || [];
    const names = new Set(known.map((f) => f.name));
    const extra = Object.keys(this.cred.fields || {})
      .filter((n) => !names.has(n))
      .map((n) => ({ name: n, label: n, kind: "text", secret: isSecretValue(this.cred.fields[n]), required: false }));
    return [...known, ...extra];
  }

  secretSpecs() {
    return ((this.desc && this.desc.fields) || []).filter((f) => f.secret);
  }

  // ---- header, fields, buttons -----------------------------------------------------

  renderTop() {
    this.renderHead();
    this.renderFields();
    this.renderActions();
  }

  renderHead() {
    const c = this.cred;
    const health = badge(c.health);
    health.id = "health";
    const typeName = this.desc ? this.desc.display_name || c.type : c.type;
    const last = c.last_test;
    const monitor = c.monitor || {};
    const rows = [
      ["Type", [typeName, " ", h("span", { class: "muted" }, `(${c.type})`)]],
      ["ID", h("code", {}, c.id)],
      ["Environment", c.environment || h("span", { class: "muted" }, "—")],
      ["Version", String(c.version)],
      ["Created", fmtTime(c.created_at)],
      ["Updated", fmtTime(c.updated_at)],
      ["Last tested", last ? [fmtTime(last.at), " · ", statusWord(last.status), " ", last.summary || ""] : h("span", { class: "muted" }, "never")],
      ["Next scheduled test", c.next_test_at ? fmtTime(c.next_test_at) : h("span", { class: "muted" }, "not scheduled")],
      ["Monitoring", monitor.enabled === false ? "off" : monitor.interval_secs ? `every ${monitor.interval_secs} s` : "on (default interval)"],
    ];
    if (c.expires_at) rows.push(["Expires", fmtTime(c.expires_at)]);
    if (c.deleted_at) rows.push(["Deleted", fmtTime(c.deleted_at)]);
    replace(
      this.head,
      h("p", { class: "muted crumbs" }, h("a", { href: "#/credentials" }, "Credentials")),
      h("h1", {}, c.name),
      h(
        "p",
        { class: "detail-sub" },
        health,
        c.deleted_at ? h("span", { class: "marker-deleted" }, "deleted") : null,
        (c.tags || []).map((t) => h("span", { class: "tag" }, t)),
      ),
      c.description ? h("p", { class: "detail-desc" }, c.description) : null,
      c.deleted_at ? h("p", { class: "muted" }, "This credential is deleted: it cannot be used or tested until it is restored.") : null,
      h("dl", { class: "meta" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  }

  renderFields() {
    const specs = this.specs();
    if (!specs.length) {
      replace(this.fields, h("p", { class: "muted" }, "No fields."));
      return;
    }
    replace(
      this.fields,
      h(
        "dl",
        { class: "meta fields-list" },
        specs.map((s) => [h("dt", {}, s.label || s.name), h("dd", {}, fieldValue(this.cred.fields[s.name], s.secret))]),
      ),
      this.desc ? null : h("p", { class: "muted" }, `The type ${this.cred.type} is not loaded: fields are shown as stored.`),
    );
  }

  renderActions() {
    const c = this.cred;
    const write = session.can("write");
    const secrets = this.secretSpecs().length > 0;
    const buttons = [];
    if (!c.deleted_at) {
      if (session.can("test")) buttons.push(actionButton("Test", () => this.runTest(), { class: "primary" }));
      if (write && this.desc) buttons.push(h("button", { type: "button", on: { click: () => this.showEdit() } }, "Edit"));
      if (write && secrets) buttons.push(h("button", { type: "button", on: { click: () => this.showReplace() } }, "Replace secret"));
      if (write && session.can("test") && secrets) buttons.push(h("button", { type: "button", on: { click: () => this.showRotate() } }, "Rotate"));
      if (write) buttons.push(actionButton("Delete", () => this.remove(), { class: "danger" }));
    } else if (write) {
      buttons.push(actionButton("Restore", () => this.restore(), { class: "primary" }));
      buttons.push(actionButton("Purge", () => this.purge(), { class: "danger" }));
    }
    replace(this.actions, buttons);
    this.actions.hidden = buttons.length === 0;
  }

  // ---- forms (one at a time) -------------------------------------------------------

  closeForm() {
    if (this.openForm) this.openForm.clear();
    this.openForm = null;
    replace(this.panel);
  }

  /** Shows a form in the panel; `controls` are cleared when it closes. */
  showForm(kind, title, controls, extra, submitLabel, onSubmit) {
    this.closeForm();
    const errorSlot = h("div", { class: "form-error" });
    const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
    const cancel = h("button", { type: "button", on: { click: () => this.closeForm() } }, "Cancel");
    const titleId = `form-${kind}-title`;
    const form = h(
      "form",
      { class: "card form detail-form", "aria-labelledby": titleId, autocomplete: "off" },
      h("h2", { id: titleId }, title),
      controls.map((c) => c.el),
      extra,
      errorSlot,
      h("div", { class: "actions" }, submit, cancel),
    );
    const clear = () => controls.forEach((c) => c.clear());
    this.openForm = { kind, clear };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (submit.disabled) return;
      submit.disabled = true;
      submit.setAttribute("aria-busy", "true");
      const sp = spinner();
      submit.prepend(sp);
      try {
        await onSubmit({ errorSlot, form, clear });
      } catch (e) {
        showErrors(controls, e, errorSlot);
      } finally {
        sp.remove();
        submit.disabled = false;
        submit.removeAttribute("aria-busy");
      }
    });
    replace(this.panel, form);
    const first = controls[0];
    if (first) first.input.focus();
  }

  showEdit() {
    const c = this.cred;
    const common = commonControls({ name: c.name, description: c.description, tags: c.tags, environment: c.environment }, this.desc);
    const plain = this.desc.fields.filter((f) => !f.secret).map((f) => fieldControl(f, { value: c.fields[f.name], nullWhenEmpty: true }));
    this.showForm("edit", "Edit", [...common, ...plain], null, "Save changes", async () => {
      const body = this.editChanges(common, plain);
      if (!Object.keys(body).length) {
        this.closeForm();
        notice("Nothing changed.");
        return;
      }
      await api("PATCH", this.path, body);
      if (!this.isCurrent()) return;
      this.closeForm();
      notice("Saved.");
      await this.refresh();
      this.loadVersions();
      this.loadAudit(true);
    });
  }

  /** Only what differs from the stored credential. */
  editChanges(common, plain) {
    const c = this.cred;
    const body = {};
    for (const ctl of common) {
      const v = ctl.read();
      if (ctl.name === "name" && v !== c.name) body.name = v;
      if (ctl.name === "description" && v !== (c.description || "")) body.description = v;
      if (ctl.name === "tags" && JSON.stringify(v) !== JSON.stringify(c.tags || [])) body.tags = v;
      if (ctl.name === "environment" && (v || null) !== (c.environment || null)) body.environment = v || null;
    }
    const fields = {};
    for (const ctl of plain) {
      const v = ctl.read();
      const old = c.fields[ctl.name];
      const had = old !== undefined && old !== null && old !== "";
      if (v === undefined || v === null) {
        if (had) fields[ctl.name] = null;
      } else if (v === false && !had) {
        // An unticked box for a value never stored: nothing changed.
      } else if (!had || String(v) !== String(old)) {
        fields[ctl.name] = v;
      }
    }
    if (Object.keys(fields).length) body.fields = fields;
    return body;
  }

  /** The type's secret fields, empty (required ones stay required). */
  secretControls() {
    return this.secretSpecs().map((f) => fieldControl(f, { value: "" }));
  }

  typedSecrets(controls) {
    const fields = {};
    for (const ctl of controls) {
      const v = ctl.read();
      if (v !== undefined && v !== null && v !== "") fields[ctl.name] = v;
    }
    return fields;
  }

  showReplace() {
    const controls = this.secretControls();
    const intro = h("p", { class: "muted" }, "Type the new values. Secret fields left empty keep their stored value. The old value is kept as a previous version.");
    this.showForm("replace", "Replace secret", controls, intro, "Save changes", async ({ errorSlot }) => {
      let fields = this.typedSecrets(controls);
      if (!Object.keys(fields).length) {
        replace(errorSlot, h("p", { class: "error", role: "alert" }, "Type at least one new secret value."));
        return;
      }
      try {
        await api("PATCH", this.path, { fields });
      } finally {
        fields = null;
      }
      controls.forEach((ctl) => ctl.clear());
      this.closeForm();
      replace(this.testResult);
      notice("Secret replaced");
      if (!this.isCurrent()) return;
      await this.refresh();
      this.loadVersions();
      this.loadAudit(true);
    });
  }

  showRotate() {
    const controls = this.secretControls();
    const force = h("input", { type: "checkbox", id: "rotate-force", name: "force" });
    const outcome = h("div", { class: "rotate-outcome", "aria-live": "polite" });
    const extra = [
      h("p", { class: "muted" }, "The new values are tested before they are used; the current version stays in use if the test fails."),
      h("div", { class: "check" }, force, h("label", { for: "rotate-force" }, "Promote even if the test fails")),
      outcome,
    ];
    this.showForm("rotate", "Rotate", controls, extra, "Rotate", async ({ errorSlot }) => {
      replace(outcome);
      let fields = this.typedSecrets(controls);
      if (!Object.keys(fields).length) {
        replace(errorSlot, h("p", { class: "error", role: "alert" }, "Type at least one new secret value."));
        return;
      }
      const key = crypto.randomUUID();
      let r;
      try {
        r = await api("POST", `${this.path}/rotate`, { fields, force: force.checked }, { "Idempotency-Key": key });
      } finally {
        fields = null;
      }
      controls.forEach((ctl) => ctl.clear());
      if (!this.isCurrent()) return;
      this.closeForm();
      replace(this.testResult);
      this.showRotation(r);
      await this.refresh();
      this.loadVersions();
      this.loadHistory();
      this.loadAudit(true);
    });
  }

  showRotation(r) {
    const what = r.result === "promoted" ? `Version ${r.version} is now current (its test said ${r.status}).`
      : r.result === "forced" ? `Version ${r.version} is now current although its test said ${r.status} (forced).`
      : `Version ${r.version} was not promoted: its test said ${r.status}. Version ${r.current_version} stays current; promote version ${r.version} by hand if you are sure.`;
    replace(
      this.panel,
      h(
        "div",
        { class: "card rotate-result", role: "status" },
        h("h2", {}, "Rotation ", r.result),
        h("p", {}, what),
        r.summary ? h("p", {}, statusWord(r.status), " ", r.summary) : null,
        r.superseded_version ? h("p", { class: "muted" }, `Pending version ${r.superseded_version} was superseded.`) : null,
        h("button", { type: "button", on: { click: () => this.closeForm() } }, "Close"),
      ),
    );
    notice(r.result === "failed" ? "Rotation failed: the current version stays." : "Rotated.", r.result === "failed" ? "error" : undefined);
  }

  // ---- test ------------------------------------------------------------------------

  async runTest() {
    replace(this.testResult, h("p", { class: "muted" }, spinner(), " Testing…"));
    this.testResult.setAttribute("aria-busy", "true");
    let r;
    try {
      r = await api("POST", `${this.path}/test`);
    } catch (e) {
      if (!this.isCurrent()) return;
      this.testResult.removeAttribute("aria-busy");
      replace(this.testResult, h("h2", {}, "Test"), errorBox(e));
      return;
    }
    if (!this.isCurrent()) return;
    this.testResult.removeAttribute("aria-busy");
    replace(
      this.testResult,
      h("h2", {}, "Test result"),
      h("p", { class: "test-line" }, statusWord(r.status), " ", r.summary || ""),
      factsList(r.facts),
      r.latency_ms !== undefined && r.latency_ms !== null ? h("p", { class: "muted" }, `Latency: ${r.latency_ms} ms`) : null,
    );
    await this.refresh();
    this.loadHistory();
    this.loadAudit(true);
  }

  // ---- delete / restore / purge ----------------------------------------------------

  async remove() {
    if (!confirm(`Delete "${this.cred.name}"? It stops working at once; you can restore it later.`)) return;
    await api("DELETE", this.path);
    this.closeForm();
    notice("Deleted. Restore brings it back.");
    await this.refresh();
    this.loadSections();
  }

  async restore() {
    await api("POST", `${this.path}/restore`);
    notice("Restored.");
    await this.refresh();
    this.loadSections();
  }

  async purge() {
    if (!confirm(`Purge "${this.cred.name}" for good? Every version of its secrets is destroyed. This cannot be undone.`)) return;
    await api("DELETE", query(this.path, { purge: "true" }));
    notice("Purged.");
    go("#/credentials");
  }

  // ---- test history ----------------------------------------------------------------

  async loadHistory() {
    const ok = this.fresh("history");
    replace(this.history, loading());
    let data;
    try {
      data = await api("GET", `${this.path}/tests`);
    } catch (e) {
      if (ok()) replace(this.history, errorBox(e));
      return;
    }
    if (!ok()) return;
    const items = (data && data.items) || [];
    if (!items.length) {
      replace(this.history, h("p", { class: "muted" }, "Not tested yet."));
      return;
    }
    replace(
      this.history,
      table(
        "Test history",
        ["When", "Trigger", "Status", "Summary"],
        items.map((t) =>
          h(
            "tr",
            {},
            cell("When", fmtTime(t.at)),
            cell("Trigger", t.trigger),
            cell("Status", statusWord(t.status)),
            cell("Summary", t.summary || "", t.latency_ms !== undefined ? h("span", { class: "muted" }, ` (${t.latency_ms} ms)`) : null),
          ),
        ),
      ),
    );
  }

  // ---- versions ----------------------------------------------------------------------

  async loadVersions() {
    const ok = this.fresh("versions");
    replace(this.versions, loading());
    let data;
    try {
      data = await api("GET", `${this.path}/versions`);
    } catch (e) {
      if (ok()) replace(this.versions, errorBox(e));
      return;
    }
    if (!ok()) return;
    const items = (data && data.items) || [];
    const canPromote = session.can("write") && !this.cred.deleted_at;
    replace(
      this.versions,
      h("p", { class: "muted" }, `Current: version ${data.current}`, data.pending ? ` · pending: version ${data.pending}` : "", ` · keeps at most ${data.max_versions}.`),
      items.length
        ? table(
          "Versions",
          ["Version", "State", "Created", "Actor", "Reason", "Test", ""],
          items.map((v) =>
            h(
              "tr",
              { dataset: { version: String(v.version) } },
              cell("Version", String(v.version)),
              cell("State", h("span", { class: `state state-${v.state}` }, v.state), v.forced ? h("span", { class: "muted" }, " (forced)") : null),
              cell("Created", fmtTime(v.created_at)),
              cell("Actor", v.actor || "—"),
              cell("Reason", v.reason || "—"),
              cell("Test", v.test ? [statusWord(v.test.status), " ", v.test.summary || ""] : "—"),
              cell("Action", canPromote && v.state !== "current" ? actionButton("Promote", () => this.promote(v)) : null),
            ),
          ),
        )
        : h("p", { class: "muted" }, "No versions."),
    );
  }

  async promote(v) {
    const why = v.state === "previous" ? "This rolls back to the version before the current one." : "";
    if (!confirm(`Make version ${v.version} (${v.state}) the current one? ${why}`.trim())) return;
    try {
      await api("POST", `${this.path}/versions/${seg(v.version)}/promote`);
    } catch (e) {
      if (this.isCurrent()) notice(`Version ${v.version} was not promoted: ${e.message}`, "error");
      return;
    }
    notice(`Version ${v.version} is now current.`);
    if (!this.isCurrent()) return;
    replace(this.testResult);
    await this.refresh();
    this.loadVersions();
    this.loadAudit(true);
  }

  // ---- audit ---------------------------------------------------------------------------

  async loadAudit(reset) {
    // "More" continues the current listing; a reset starts a new one (and drops late pages).
    if (reset) this.seqs.audit = (this.seqs.audit || 0) + 1;
    const n = this.seqs.audit;
    const ok = () => this.isCurrent() && this.seqs.audit === n;
    if (reset) {
      this.auditCursor = null;
      this.auditRows = h("tbody");
      this.auditMore = h("div", { class: "pager" });
      replace(this.audit, loading());
    }
    let data;
    try {
      data = await api("GET", query("/api/audit", { credential: this.id, limit: AUDIT_PAGE, cursor: this.auditCursor }));
    } catch (e) {
      if (ok()) replace(reset ? this.audit : this.auditMore, errorBox(e));
      return;
    }
    if (!ok()) return;
    const items = (data && data.items) || [];
    for (const a of items) {
      this.auditRows.append(
        h(
          "tr",
          {},
          cell("Time", fmtTime(a.at)),
          cell("Actor", a.actor),
          cell("Action", h("span", { class: "mono" }, a.action)),
          cell("Outcome", h("span", { class: a.outcome === "ok" ? "ok" : "error" }, a.outcome)),
          cell("Details", h("span", { class: "mono" }, a.detail || "")),
        ),
      );
    }
    this.auditCursor = (data && data.next_cursor) || null;
    if (reset) {
      const t = h(
        "table",
        { class: "stack audit" },
        h("caption", { class: "visually-hidden" }, "Audit records"),
        h("thead", {}, h("tr", {}, ["Time", "Actor", "Action", "Outcome", "Details"].map((x) => h("th", { scope: "col" }, x)))),
        this.auditRows,
      );
      replace(this.audit, t, this.auditMore);
    }
    if (!this.auditRows.children.length && !this.auditCursor) {
      replace(this.audit, h("p", { class: "muted" }, "No audit records."));
      return;
    }
    replace(this.auditMore, this.auditCursor ? actionButton("More", () => this.loadAudit(false)) : null);
  }

  // ---- grants --------------------------------------------------------------------------

  async loadGrants() {
    const ok = this.fresh("grants");
    const canCreate = session.can("write") && session.can("use") && !this.cred.deleted_at;
    if (!this.grantOpener) {
      this.grantOpener = h("button", { type: "button", on: { click: () => this.showGrantForm() } }, "Create grant");
      this.grantForm = h("div");
      this.grantShown = h("div");
    }
    replace(
      this.grantArea,
      h("p", { class: "muted" }, "A grant lets an agent use this credential through the proxy without seeing it: limited in time, methods, paths and calls."),
      this.grantShown,
      canCreate ? h("div", { class: "actions" }, this.grantOpener) : null,
      this.grantForm,
    );
    replace(this.grants, loading());
    let items;
    try {
      items = await api("GET", `${this.path}/grants`);
    } catch (e) {
      if (ok()) replace(this.grants, errorBox(e));
      return;
    }
    if (!ok()) return;
    items = items || [];
    if (!items.length) {
      replace(this.grants, h("p", { class: "muted" }, "No grants."));
      return;
    }
    const canRevoke = session.can("write");
    replace(
      this.grants,
      table(
        "Grants",
        ["Label", "Methods", "Path prefixes", "Calls", "Expires", "State", ""],
        items.map((g) => {
          const state = grantState(g);
          return h(
            "tr",
            { dataset: { grant: g.grant_id } },
            cell("Label", g.label || h("span", { class: "muted" }, "(no label)")),
            cell("Methods", g.methods && g.methods.length ? g.methods.join(", ") : h("span", { class: "muted" }, "any the type allows")),
            cell("Path prefixes", g.path_prefixes && g.path_prefixes.length ? g.path_prefixes.map((p) => h("code", { class: "tag" }, p)) : h("span", { class: "muted" }, "any the type allows")),
            cell("Calls", g.max_calls !== null && g.max_calls !== undefined ? `${g.calls} / ${g.max_calls}` : `${g.calls}`),
            cell("Expires", fmtTime(g.expires_at)),
            cell("State", h("span", { class: `state state-${state === "used up" ? "other" : state}` }, state)),
            cell("Action", canRevoke && state === "active" ? actionButton("Revoke", () => this.revokeGrant(g), { class: "danger" }) : null),
          );
        }),
      ),
    );
  }

  async revokeGrant(g) {
    if (!confirm(`Revoke the grant "${g.label || g.grant_id}"? Its holder can no longer use this credential.`)) return;
    await api("DELETE", `${this.path}/grants/${seg(g.grant_id)}`);
    notice("Grant revoked.");
    if (!this.isCurrent()) return;
    this.loadGrants();
    this.loadAudit(true);
  }

  showGrantForm() {
    const errs = {};
    const field = (key, id, labelText, input, help) => {
      const err = h("p", { class: "field-error", id: `err-grant-${key}`, role: "alert", hidden: true });
      errs[key] = { err, input };
      if (help) input.setAttribute("aria-describedby", `help-grant-${key}`);
      return h("div", { class: "field" }, h("label", { for: id }, labelText), input, err, help ? h("p", { class: "help", id: `help-grant-${key}` }, help) : null);
    };
    const label = h("input", { type: "text", id: "grant-label", name: "label", autocomplete: "off" });
    const ttl = h("input", { type: "number", id: "grant-ttl", name: "ttl_secs", min: 1, max: 2592000, step: 1, value: "3600", required: true, "aria-required": "true" });
    const boxes = METHODS.map((m) => h("input", { type: "checkbox", id: `grant-method-${m}`, name: "methods", value: m }));
    const paths = h("input", { type: "text", id: "grant-paths", name: "path_prefixes", autocomplete: "off", spellcheck: "false", placeholder: "/v2/positions, /v2/orders" });
    const maxCalls = h("input", { type: "number", id: "grant-max-calls", name: "max_calls", min: 0, step: 1 });
    const methodsErr = h("p", { class: "field-error", id: "err-grant-methods", role: "alert", hidden: true });
    errs.methods = { err: methodsErr, input: boxes[0] };
    const errorSlot = h("div", { class: "form-error" });
    const submit = h("button", { type: "submit", class: "primary" }, "Create grant");
    const form = h(
      "form",
      { class: "card form grant-form", "aria-labelledby": "grant-form-title", autocomplete: "off" },
      h("h3", { id: "grant-form-title" }, "New grant"),
      field("label", "grant-label", "Label", label, "Who or what holds it, e.g. ci-agent."),
      field("ttl_secs", "grant-ttl", ["TTL (seconds)", h("span", { class: "req", "aria-hidden": "true" }, "*")], ttl, "How long it lasts: at most 30 days (2592000)."),
      h(
        "fieldset",
        { class: "methods" },
        h("legend", {}, "Methods"),
        h("p", { class: "help" }, "None checked: what the type allows."),
        h("div", { class: "checks" }, boxes.map((b) => h("span", { class: "check" }, b, h("label", { for: b.id }, b.value)))),
        methodsErr,
      ),
      field("path_prefixes", "grant-paths", "Path prefixes", paths, "Comma-separated; empty: what the type allows."),
      field("max_calls", "grant-max-calls", "Max calls", maxCalls, "Optional: how many proxy calls in all."),
      errorSlot,
      h("div", { class: "actions" }, submit, h("button", { type: "button", on: { click: () => this.closeGrantForm() } }, "Cancel")),
    );
    const showFieldErrors = (e) => {
      for (const { err, input } of Object.values(errs)) {
        err.hidden = true;
        replace(err);
        input.removeAttribute("aria-invalid");
      }
      replace(errorSlot);
      const unmatched = [];
      for (const [f, msg] of Object.entries((e && e.fields) || {})) {
        const key = f.replace(/\[\d+\]$/, "");
        const slot = errs[key];
        if (!slot) {
          unmatched.push(`${f}: ${msg}`);
          continue;
        }
        replace(slot.err, msg);
        slot.err.hidden = false;
        slot.input.setAttribute("aria-invalid", "true");
      }
      if (unmatched.length || !Object.keys((e && e.fields) || {}).length) replace(errorSlot, errorBox(e), unmatched.map((u) => h("p", { class: "error" }, u)));
    };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (submit.disabled) return;
      const body = {
        label: label.value.trim(),
        ttl_secs: Number(ttl.value),
        methods: boxes.filter((b) => b.checked).map((b) => b.value),
        path_prefixes: paths.value.split(",").map((p) => p.trim()).filter(Boolean),
      };
      if (maxCalls.value !== "") body.max_calls = Number(maxCalls.value);
      submit.disabled = true;
      submit.setAttribute("aria-busy", "true");
      const sp = spinner();
      submit.prepend(sp);
      let issued;
      try {
        issued = await api("POST", `${this.path}/grants`, body);
      } catch (e) {
        showFieldErrors(e);
        return;
      } finally {
        sp.remove();
        submit.disabled = false;
        submit.removeAttribute("aria-busy");
      }
      if (!this.isCurrent()) return;
      this.closeGrantForm();
      this.showIssued(issued);
      notice("Grant created.");
      this.loadGrants();
      this.loadAudit(true);
    });
    this.grantOpener.hidden = true;
    replace(this.grantForm, form);
    label.focus();
  }

  closeGrantForm() {
    replace(this.grantForm);
    if (this.grantOpener) this.grantOpener.hidden = false;
  }

  /** The grant's token, shown once; "Done" removes it from the page. */
  showIssued(issued) {
    const input = h("input", { type: "text", id: "grant-token", readonly: true, value: issued.token, spellcheck: "false", autocomplete: "off", class: "mono" });
    const block = h(
      "div",
      { class: "shown-once", role: "status" },
      h("p", {}, h("strong", {}, "Copy the grant's token now: it is shown only once."), " Hand it to the agent with the proxy URL."),
      h("label", { for: "grant-token" }, "Grant token"),
      h("div", { class: "token-row" }, input, h("button", { type: "button", on: { click: () => copy(input.value, input) } }, "Copy")),
      h("p", {}, "Proxy URL: ", h("code", {}, new URL(issued.proxy_url, location.origin).href)),
      h("button", {
        type: "button",
        class: "primary",
        on: {
          click: () => {
            input.value = "";
            block.remove();
            if (this.grantOpener) this.grantOpener.focus();
          },
        },
      }, "Done"),
    );
    issued.token = null;
    replace(this.grantShown, block);
    input.focus();
    input.select();
  }
}

/** active, revoked, expired or used up. */
function grantState(g) {
  if (g.revoked_at) return "revoked";
  if (g.expires_at && new Date(g.expires_at) <= new Date()) return "expired";
  if (g.max_calls !== null && g.max_calls !== undefined && g.calls >= g.max_calls) return "used up";
  return "active";
}
