// Tokens and administration: the caller's own tokens and grants, and (admins) users,
// everyone's tokens, and the plugins loaded.

import { actionButton, api, copy, errorBox, fmtTime, forgetTypes, go, h, notice, query, replace, route, seg, session, spinner } from "./core.js";
import { fieldControl, showErrors } from "./form.js";

const SCOPES = ["read", "write", "test", "use", "reveal", "admin"];

function cell(label, ...content) {
  return h("td", { dataset: { label } }, ...content);
}

function headRow(cols) {
  return h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c || h("span", { class: "visually-hidden" }, "Actions")))));
}

/** The session ends when its own token is revoked: the same as "Sign out". */
function signedOutByRevoke() {
  session.clear();
  forgetTypes();
  document.dispatchEvent(new Event("credhost:signedout"));
  notice("You revoked the token this console used: signed out.");
  go("#/signin");
}

/** A table of token records; `revoke(t)` is called for "Revoke" on an active one. */
function tokensTable(list, opts) {
  const cols = [opts.showUser ? "User" : null, "ID", "Kind", "Label", "Scopes", "State", "Created", "Expires", ""].filter((c) => c !== null);
  return h(
    "table",
    { class: "stack tokens" },
    headRow(cols),
    h(
      "tbody",
      {},
      list.map((t) =>
        h(
          "tr",
          { dataset: { id: t.id }, class: t.current ? "current" : null },
          opts.showUser ? cell("User", t.user, t.role === "admin" ? h("span", { class: "muted" }, " (admin)") : null) : null,
          cell("ID", h("code", {}, t.id), t.current ? [" ", h("span", { class: "marker-current" }, "current")] : null),
          cell(
            "Kind",
            t.kind,
            t.kind === "grant" && t.credential ? [" for ", h("a", { href: `#/credentials/${encodeURIComponent(t.credential)}` }, "credential")] : null,
          ),
          cell("Label", t.label || "—"),
          cell("Scopes", (t.scopes || []).map((s) => h("span", { class: "tag" }, s))),
          cell("State", h("span", { class: `state state-${["active", "expired", "revoked"].includes(t.state) ? t.state : "other"}` }, t.state)),
          cell("Created", fmtTime(t.created_at)),
          cell("Expires", t.expires_at ? fmtTime(t.expires_at) : "never", t.revoked_at ? h("div", { class: "muted" }, `revoked ${fmtTime(t.revoked_at)}`) : null),
          cell(
            "Actions",
            t.state === "active"
              ? actionButton("Revoke", () => opts.revoke(t), { class: "danger" })
              : null,
          ),
        ),
      ),
    ),
  );
}

async function revokeWith(path, t, reload) {
  const warn = t.current
    ? `Revoke token ${t.id}? It is the token this console is signed in with: you will be signed out.`
    : `Revoke token ${t.id}${t.label ? ` (${t.label})` : ""}? Anything using it stops working.`;
  if (!window.confirm(warn)) return;
  await api("DELETE", path);
  if (t.current) return signedOutByRevoke();
  notice(`Revoked token ${t.id}.`);
  await reload();
}

// ---- my tokens ----------------------------------------------------------------------

route("#/tokens", async (_, main, isCurrent) => {
  const box = h("div", { id: "token-list" });
  replace(
    main,
    h("h1", {}, "My tokens"),
    h(
      "p",
      { class: "muted" },
      "Your API tokens and the grants made from your credentials. New tokens come from an admin (",
      h("code", {}, "credhost tokens create"),
      "); grants from a credential's page.",
    ),
    box,
  );
  const load = async () => {
    const list = await api("GET", "/api/tokens");
    if (!isCurrent()) return;
    replace(
      box,
      list.length
        ? tokensTable(list, { revoke: (t) => revokeWith(`/api/tokens/${seg(t.id)}`, t, load) })
        : h("p", { class: "empty" }, "No tokens."),
    );
  };
  await load();
});

// ---- users (admin) ------------------------------------------------------------------

/** A token value shown once: read-only, with "Copy" and "Done" (which removes it). */
function shownOnce(issued, where) {
  const input = h("input", {
    id: "issued-token",
    type: "text",
    readonly: true,
    value: issued.token,
    class: "mono",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "issued-token-help",
  });
  const box = h(
    "div",
    { class: "shown-once", role: "region", "aria-label": "New token" },
    h("label", { for: "issued-token" }, `New token for ${issued.user}`),
    input,
    h(
      "p",
      { class: "help", id: "issued-token-help" },
      `Token ${issued.token_id}, scopes ${(issued.scopes || []).join(", ")}, ${issued.expires_at ? `expires ${fmtTime(issued.expires_at)}` : "no expiry"}. `,
      "It is shown only this once: copy it now.",
    ),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", on: { click: () => copy(input.value, input) } }, "Copy"),
      h(
        "button",
        {
          type: "button",
          on: {
            click: () => {
              input.value = "";
              box.remove();
            },
          },
        },
        "Done",
      ),
    ),
  );
  issued.token = null;
  replace(where, box);
  input.focus();
  input.select();
}

/** A submit handler that disables the button and shows a spinner while `fn` runs. */
function busySubmit(form, button, fn) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    const sp = spinner();
    button.prepend(sp);
    try {
      await fn();
    } finally {
      sp.remove();
      button.disabled = false;
    }
  });
}

route(
  "#/admin/users",
  async (_, main, isCurrent) => {
    const issuedSlot = h("div", { id: "issued", "aria-live": "polite" });
    const listBox = h("div", { id: "user-list" });

    // Add a user.
    const uName = fieldControl(
      { name: "name", label: "User name", kind: "text", required: true, help: "1 to 64 of A-Z a-z 0-9 . _ - @" },
      {},
    );
    const uAdmin = fieldControl({ name: "admin", label: "Administrator", kind: "boolean", help: "Admins manage users, tokens and plugins." }, {});
    const uErr = h("div", { class: "form-error" });
    const uButton = h("button", { type: "submit", class: "primary" }, "Add user");
    const userForm = h(
      "form",
      { class: "card narrow", "aria-labelledby": "add-user-title" },
      h("h2", { id: "add-user-title" }, "Add a user"),
      h("p", { class: "muted" }, "The user gets a first token, shown once."),
      uName.el,
      uAdmin.el,
      uErr,
      h("div", { class: "actions" }, uButton),
    );

    // Issue a token.
    const tokenBox = h("div", {});
    let users = [];

    const load = async () => {
      users = await api("GET", "/api/admin/users");
      if (!isCurrent()) return;
      replace(
        listBox,
        h(
          "table",
          { class: "stack users" },
          headRow(["Name", "Role", "Namespace", "Created", ""]),
          h(
            "tbody",
            {},
            users.map((u) =>
              h(
                "tr",
                { dataset: { name: u.name } },
                cell("Name", u.name),
                cell("Role", u.role),
                cell("Namespace", h("code", {}, u.namespace)),
                cell("Created", fmtTime(u.created_at)),
                cell(
                  "Actions",
                  h("a", { href: query("#/admin/tokens", { user: u.name }) }, "Tokens"),
                  " ",
                  h("button", { type: "button", "aria-label": `Issue token for ${u.name}`, on: { click: () => tokenForm(u.name) } }, "Issue token"),
                ),
              ),
            ),
          ),
        ),
      );
      tokenForm(tokenBox.dataset.user || (users[0] && users[0].name) || "", true);
    };

    /** The "Issue a token" form for `user` (re-rendered when another user is chosen). */
    function tokenForm(user, quiet) {
      tokenBox.dataset.user = user;
      const tUser = fieldControl({ name: "user", label: "User", kind: "choice", required: true, choices: users.map((u) => u.name) }, { value: user });
      const tLabel = fieldControl({ name: "label", label: "Label", kind: "text", help: "What the token is for, e.g. ci-deploy." }, {});
      const tDays = fieldControl({ name: "expires_in_secs", label: "Expires in (days)", kind: "number", help: "1 to 3660 days; empty: no expiry." }, {});
      tDays.input.setAttribute("min", "1");
      const scopeBoxes = SCOPES.map((s) => h("input", { type: "checkbox", id: `scope-${s}`, name: "scopes", value: s }));
      const scopes = h(
        "fieldset",
        { class: "scopes" },
        h("legend", {}, "Scopes"),
        h("p", { class: "help" }, "None checked: the user's defaults (read, write, test, use, and admin for admins). reveal is never a default."),
        scopeBoxes.map((b, i) => h("div", { class: "check" }, b, h("label", { for: b.id }, SCOPES[i]))),
      );
      const tErr = h("div", { class: "form-error" });
      const tButton = h("button", { type: "submit", class: "primary" }, "Issue token");
      const form = h(
        "form",
        { class: "card narrow", "aria-labelledby": "issue-title" },
        h("h2", { id: "issue-title" }, "Issue a token"),
        tUser.el,
        tLabel.el,
        tDays.el,
        scopes,
        tErr,
        h("div", { class: "actions" }, tButton),
      );
      tUser.input.addEventListener("change", () => (tokenBox.dataset.user = tUser.input.value));
      busySubmit(form, tButton, async () => {
        const name = tUser.read();
        const body = {};
        const label = tLabel.read();
        if (label) body.label = label;
        const days = tDays.read();
        if (days !== undefined) body.expires_in_secs = typeof days === "number" ? Math.round(days * 86400) : days;
        const chosen = scopeBoxes.filter((b) => b.checked).map((b) => b.value);
        if (chosen.length) body.scopes = chosen;
        let issued;
        try {
          issued = await api("POST", `/api/admin/users/${seg(name || "")}/tokens`, body);
        } catch (e) {
          showErrors([tUser, tLabel, tDays], e, tErr);
          return;
        }
        [tUser, tLabel, tDays].forEach((c) => c.setError(null));
        replace(tErr);
        tLabel.input.value = "";
        tDays.input.value = "";
        scopeBoxes.forEach((b) => (b.checked = false));
        shownOnce(issued, issuedSlot);
      });
      replace(tokenBox, form);
      if (!quiet) tUser.input.focus();
    }

    busySubmit(userForm, uButton, async () => {
      let issued;
      try {
        issued = await api("POST", "/api/admin/users", { name: uName.read() || "", admin: uAdmin.read() });
      } catch (e) {
        showErrors([uName, uAdmin], e, uErr);
        return;
      }
      uName.setError(null);
      replace(uErr);
      uName.input.value = "";
      uAdmin.input.checked = false;
      tokenBox.dataset.user = issued.user;
      notice(`Added user ${issued.user}.`);
      await load();
      shownOnce(issued, issuedSlot);
    });

    replace(
      main,
      h("h1", {}, "Users"),
      issuedSlot,
      listBox,
      h("div", { class: "admin-forms" }, userForm, tokenBox),
    );
    await load();
  },
  { admin: true },
);

// ---- all tokens (admin) -------------------------------------------------------------

route(
  "#/admin/tokens",
  async (args, main, isCurrent) => {
    const user = h("input", { id: "flt-user", type: "text", name: "user", value: args.user || "", autocomplete: "off", spellcheck: "false" });
    const filter = h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter tokens" },
      h("div", {}, h("label", { for: "flt-user" }, "User"), user),
      h("div", { class: "filter-actions" }, h("button", { type: "submit" }, "Show"), args.user ? h("a", { href: "#/admin/tokens" }, "All users") : null),
    );
    filter.addEventListener("submit", (ev) => {
      ev.preventDefault();
      go(query("#/admin/tokens", { user: user.value.trim() }));
    });
    const box = h("div", { id: "token-list" });
    replace(main, h("h1", {}, args.user ? `Tokens of ${args.user}` : "All tokens"), filter, box);
    const load = async () => {
      let list;
      try {
        list = await api("GET", query("/api/admin/tokens", { user: args.user }));
      } catch (e) {
        if (isCurrent()) replace(box, errorBox(e));
        return;
      }
      if (!isCurrent()) return;
      replace(
        box,
        h("p", { class: "muted" }, list.length === 1 ? "1 token" : `${list.length} tokens`),
        list.length
          ? tokensTable(list, { showUser: true, revoke: (t) => revokeWith(`/api/admin/tokens/${seg(t.id)}`, t, load) })
          : null,
      );
    };
    await load();
  },
  { admin: true },
);

// ---- plugins (admin) ----------------------------------------------------------------

function problemList(title, list) {
  if (!list || !list.length) return null;
  return [
    h("h3", {}, title),
    h("ul", { class: "problems" }, list.map((p) => h("li", {}, h("code", {}, p.origin), ": ", p.message))),
  ];
}

route(
  "#/admin/plugins",
  async (_, main, isCurrent) => {
    const box = h("div", { id: "plugin-list" });
    const result = h("div", { id: "reload-result", role: "status" });
    const load = async () => {
      const view = await api("GET", "/api/admin/plugins");
      if (!isCurrent()) return;
      replace(
        box,
        h(
          "table",
          { class: "stack plugins" },
          headRow(["Type", "Version", "Source", "Capabilities", "Allowed hosts", "Tests read-only", "SHA-256"]),
          h(
            "tbody",
            {},
            (view.plugins || []).map((p) =>
              h(
                "tr",
                { dataset: { id: p.id } },
                cell("Type", h("code", {}, p.id)),
                cell("Version", p.version),
                cell("Source", h("code", {}, p.origin)),
                cell("Capabilities", (p.capabilities || []).length ? p.capabilities.map((c) => h("span", { class: "tag" }, c)) : "—"),
                cell("Allowed hosts", (p.allowed_hosts || []).length ? p.allowed_hosts.map((x) => h("div", {}, h("code", {}, x))) : "—"),
                cell("Tests read-only", p.test_read_only ? "yes" : "no"),
                cell("SHA-256", h("code", { title: p.sha256 }, String(p.sha256 || "").slice(0, 16) + "…")),
              ),
            ),
          ),
        ),
        (view.problems || []).length ? problemList("Problems", view.problems) : h("p", { class: "muted" }, "No load problems."),
        problemList("Warnings", view.warnings),
      );
    };
    const reload = actionButton("Reload plugins", async () => {
      replace(result);
      let report;
      try {
        report = await api("POST", "/api/admin/plugins/reload");
      } catch (e) {
        replace(result, errorBox(e));
        return;
      }
      forgetTypes();
      replace(
        result,
        h(
          "div",
          { class: "card" },
          h("p", { class: "ok" }, `Reloaded. Loaded: ${(report.loaded || []).join(", ") || "none"}.`),
          problemList("Problems", report.problems) || h("p", {}, "No problems."),
          problemList("Warnings", report.warnings),
        ),
      );
      await load();
    });
    replace(
      main,
      h("h1", {}, "Plugins"),
      h("p", { class: "muted" }, "Credential types loaded now. Reloading re-reads the plugin directory and the config's overrides."),
      h("div", { class: "actions" }, reload),
      result,
      box,
    );
    await load();
  },
  { admin: true },
);
