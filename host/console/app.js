// The console's shell: sign-in and sign-out, the navigation, and the page modules (each
// registers its own routes when imported).

import { api, ApiFailure, errorBox, forgetTypes, go, h, notice, render, replace, route, session } from "./core.js";
import "./list.js";
import "./form.js";
import "./detail.js";
import "./admin.js";

/** Learns who the session's token speaks for; false when it is not valid. */
async function whoami() {
  const tokens = await api("GET", "/api/tokens");
  session.me = (tokens || []).find((t) => t.current) || null;
  return !!session.me;
}

function shell() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!session.me) {
    nav.hidden = true;
    replace(nav);
    replace(who);
    return;
  }
  const links = [
    ["#/credentials", "Credentials"],
    ["#/add", "Add credential"],
    ["#/tokens", "My tokens"],
  ];
  if (session.isAdmin()) links.push(["#/admin/users", "Users"], ["#/admin/tokens", "All tokens"], ["#/admin/plugins", "Plugins"]);
  replace(nav, h("ul", {}, links.map(([href, label]) => h("li", {}, h("a", { href }, label)))));
  nav.hidden = false;
  replace(
    who,
    h("span", { class: "muted" }, session.me.user, session.isAdmin() ? " (admin)" : ""),
    " ",
    h("button", { type: "button", class: "link", on: { click: signOut } }, "Sign out"),
  );
}

function signOut() {
  session.clear();
  forgetTypes();
  shell();
  notice("Signed out.");
  go("#/signin");
}

route(
  "#/signin",
  (_, main) => {
    if (session.me) return go("#/credentials");
    const input = h("input", {
      id: "token",
      name: "token",
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      required: true,
      placeholder: "chst_…",
    });
    const problem = h("p", { class: "error", id: "token-error", role: "alert" });
    const form = h(
      "form",
      { class: "card narrow", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, "Sign in"),
      h("p", { class: "muted" }, "Paste an API token (", h("code", {}, "credhost tokens create"), "). It is kept for this tab only."),
      h("label", { for: "token" }, "API token"),
      input,
      problem,
      h("button", { type: "submit", class: "primary" }, "Sign in"),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      replace(problem);
      const token = input.value.trim();
      if (!token) {
        replace(problem, "Enter a token.");
        return;
      }
      session.set(token);
      try {
        if (!(await whoami())) throw new ApiFailure(401, "unauthorized", "not a valid token");
      } catch (e) {
        session.clear();
        const why = e.status === 401 ? "That token is not valid (unknown, expired or revoked)." :
          e.status === 403 ? "That token cannot read credentials (it needs the read scope)." : e.message;
        replace(problem, why);
        input.value = "";
        input.focus();
        return;
      }
      input.value = "";
      shell();
      go("#/credentials");
    });
    replace(main, form);
    input.focus();
  },
  { public: true },
);

async function start() {
  if (session.token()) {
    try {
      await whoami();
    } catch (e) {
      session.clear();
      if (e.status === 401) notice("Your session ended (the token is no longer valid). Sign in again.", "error");
      else replace(document.getElementById("main"), errorBox(e));
    }
  }
  shell();
  document.addEventListener("credhost:signedout", shell);
  window.addEventListener("hashchange", () => {
    // Move focus to the new page for keyboard and screen-reader users.
    render().then(() => document.getElementById("main").focus({ preventScroll: true }));
  });
  // "Skip to content" moves focus to the page without touching the hash (the hash is
  // the route: "#main" would be a page that does not exist).
  document.querySelector(".skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    document.getElementById("main").focus();
  });
  if (!location.hash) location.replace("#/credentials");
  render();
}

start();
