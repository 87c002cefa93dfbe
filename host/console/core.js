// The console's shared parts: building DOM (text only, never HTML), calling the API on
// this origin with the session's token, hash routes, and small widgets every page uses.
// Every string from the API (names, tags, summaries, facts...) is attacker-controlled: it
// reaches the page through text nodes and attribute values only.

const TOKEN_KEY = "credhost.token";

/** Builds an element. `attrs`: attributes and properties; `on: {event: fn}` adds
 *  listeners; `class` may be a string or an array. Children: nodes, strings (as text),
 *  numbers, arrays (flattened); null/undefined/false are skipped. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === "class") {
      el.className = Array.isArray(v) ? v.filter(Boolean).join(" ") : v;
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (k === "value" || k === "checked" || k === "disabled" || k === "selected") {
      el[k] = v;
    } else if (/^on/i.test(k) || k === "style" || k === "srcdoc") {
      throw new Error(`h(): attribute ${k} is not allowed`);
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces a node's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** The signed-in session: the token lives in sessionStorage (this tab only, gone when it
 *  closes), never in a URL or persistent storage. `me` is the current token's record from
 *  GET /api/tokens (user, role, scopes). */
export const session = {
  me: null,
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    session.me = null;
  },
  can(scope) {
    return !!session.me && session.me.scopes.includes(scope);
  },
  isAdmin() {
    return session.can("admin");
  },
};

/** An API error: `status`, `code`, `message`, and `fields` ({field: message}) when the
 *  server named the inputs at fault. */
export class ApiFailure extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
}

/** Calls the API on this origin. `path` starts with /api/. Returns the parsed JSON body
 *  (null for 204). Throws ApiFailure; a 401 also ends the session. */
export async function api(method, path, body, headers) {
  const init = { method, headers: { ...(headers || {}) }, credentials: "omit", cache: "no-store" };
  const token = session.token();
  if (token) init.headers["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiFailure(0, "network", "the server did not answer");
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (e) {
    data = null;
  }
  if (res.ok) return data;
  const err = (data && data.error) || {};
  const fields = {};
  for (const f of err.fields || []) fields[f.field] = f.message;
  const failure = new ApiFailure(res.status, err.code || "error", err.message || `HTTP ${res.status}`, fields);
  // A signed-in session whose token stopped working ends here; during sign-in the page
  // itself says why the token was refused.
  if (res.status === 401 && token && session.me) {
    session.clear();
    forgetTypes();
    document.dispatchEvent(new Event("credhost:signedout"));
    notice("Your session ended (the token is no longer valid). Sign in again.", "error");
    go("#/signin");
  }
  throw failure;
}

/** One path segment for an API URL, percent-encoded. "." and ".." (or their %2e forms,
 *  which URL parsing treats the same) would make the browser drop or climb a segment and
 *  call another endpoint, so they are refused. */
export function seg(value) {
  const s = String(value);
  if (s === "" || s === "." || s === "..") throw new Error(`"${s}" cannot be used in a URL path.`);
  return encodeURIComponent(s);
}

/** Builds `/api/...?k=v` from an object, skipping empty values. */
export function query(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// ---- routes -------------------------------------------------------------------------

const routes = [];

/** Registers a page: `pattern` like "#/credentials/:id"; `render(params, main)` fills
 *  `main` (it may be async). `opts.admin`: admins only; `opts.public`: no sign-in needed. */
export function route(pattern, render, opts) {
  const names = [];
  const re = new RegExp(
    "^" + pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/:(\w+)/g, (_, n) => (names.push(n), "([^/]+)")) + "$",
  );
  routes.push({ re, names, render, opts: opts || {} });
}

/** Navigates to a hash route (renders through the hashchange listener). */
export function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

let renderSeq = 0;

/** Renders the page for the current hash. */
export async function render() {
  const seq = ++renderSeq;
  const main = document.getElementById("main");
  const hash = location.hash.split("?")[0] || "#/credentials";
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  for (const r of routes) {
    const m = r.re.exec(hash);
    if (!m) continue;
    if (!r.opts.public && !session.token()) return go("#/signin");
    if (r.opts.admin && !session.isAdmin()) {
      replace(main, h("h1", {}, "Admins only"), h("p", { class: "error" }, "This page is for admins."));
      return;
    }
    const args = {};
    let bad = false;
    r.names.forEach((n, i) => {
      try {
        args[n] = decodeURIComponent(m[i + 1]);
      } catch (e) {
        bad = true; // malformed %-escapes
      }
      if (args[n] === "." || args[n] === "..") bad = true;
    });
    if (bad) return notFound(main);
    for (const [k, v] of params) if (!(k in args)) args[k] = v;
    replace(main, h("p", { class: "muted" }, spinner(), " Loading…"));
    try {
      await r.render(args, main, () => seq === renderSeq);
    } catch (e) {
      if (seq === renderSeq) replace(main, h("h1", {}, "Something went wrong"), errorBox(e));
    }
    if (seq === renderSeq) document.dispatchEvent(new CustomEvent("credhost:rendered", { detail: hash }));
    return;
  }
  notFound(main);
}

function notFound(main) {
  replace(main, h("h1", {}, "Not found"), h("p", {}, "No page here. ", h("a", { href: "#/credentials" }, "Credentials")));
}

// ---- widgets ------------------------------------------------------------------------

/** A short message in the status line (announced to screen readers). */
export function notice(text, kind) {
  const el = document.getElementById("notice");
  replace(el, text ? h("span", { class: kind === "error" ? "error" : "ok" }, text) : null);
  if (text && kind !== "error") setTimeout(() => el.textContent === text && replace(el), 6000);
}

/** A busy indicator (decorative; the surrounding text says what is happening). */
export function spinner() {
  return h("span", { class: "spinner", "aria-hidden": "true" });
}

const HEALTH = ["valid", "invalid", "indeterminate", "expiring", "untested"];

/** The health badge: colour and word, never colour alone. */
export function badge(health) {
  const known = HEALTH.includes(health) ? health : "untested";
  return h("span", { class: `badge badge-${known}`, dataset: { health: known } }, known);
}

/** An error as a block of text (message and code). */
export function errorBox(e) {
  const msg = e instanceof ApiFailure ? e.message : String((e && e.message) || e);
  const code = e instanceof ApiFailure && e.code ? ` (${e.code})` : "";
  return h("p", { class: "error", role: "alert" }, msg + code);
}

/** "2026-12-01 10:17" in the browser's zone; "—" for nothing. */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A button that runs `fn` once at a time, shows a spinner while it runs, and reports a
 *  failure in the status line. */
export function actionButton(label, fn, attrs) {
  const b = h("button", { type: "button", ...(attrs || {}) }, label);
  b.addEventListener("click", async () => {
    if (b.disabled) return;
    b.disabled = true;
    b.setAttribute("aria-busy", "true");
    const sp = spinner();
    b.prepend(sp);
    try {
      await fn(b);
    } catch (e) {
      notice(e.message || String(e), "error");
    } finally {
      sp.remove();
      b.disabled = false;
      b.removeAttribute("aria-busy");
    }
  });
  return b;
}

/** Copies text to the clipboard; falls back to selecting it in `input`. */
export async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    notice("Copied.");
  } catch (e) {
    if (input) {
      input.focus();
      input.select();
    }
    notice("Select the text and copy it (the browser refused clipboard access).", "error");
  }
}

/** The credential types (cached for the session's life). */
let typesCache = null;
export async function types() {
  if (!typesCache) typesCache = await api("GET", "/api/credential-types");
  return typesCache;
}
export function forgetTypes() {
  typesCache = null;
}
