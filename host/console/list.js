// The credentials list: filters kept in the hash query (so reload and back work), a table
// that stacks on narrow screens, cursor paging.

import { api, badge, errorBox, fmtTime, h, query, replace, route, spinner, types } from "./core.js";

const PAGE = 25;
const HEALTHS = ["valid", "invalid", "indeterminate", "expiring", "untested"];
const FILTERS = ["name_prefix", "type", "tag", "health", "include_deleted"];

/** The hash for a set of filters (and a page cursor). */
function hashFor(state) {
  return query("#/credentials", params(state));
}

/** The list query of a set of filters and a page cursor (the hash and the API share it). */
function params(state) {
  return {
    name_prefix: state.name_prefix,
    type: state.type,
    tag: state.tag,
    health: state.health,
    include_deleted: state.include_deleted ? "true" : "",
    cursor: state.cursor,
  };
}

function labelled(id, text, input) {
  return h("div", {}, h("label", { for: id }, text), input);
}

route("#/credentials", async (args, main, isCurrent) => {
  const state = {
    name_prefix: args.name_prefix || "",
    type: args.type || "",
    tag: args.tag || "",
    health: HEALTHS.includes(args.health) ? args.health : "",
    include_deleted: args.include_deleted === "true",
    cursor: args.cursor || "",
  };
  // Older cursors, so "Previous page" can go back without the server's help.
  const back = [];

  let all = [];
  try {
    all = await types();
  } catch (e) {
    all = [];
  }
  if (!isCurrent()) return;
  const typeName = new Map(all.map((t) => [t.id, t.display_name || t.id]));

  const search = h("input", {
    id: "flt-name",
    type: "search",
    name: "name_prefix",
    value: state.name_prefix,
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "Name starts with…",
  });
  const typeSel = h(
    "select",
    { id: "flt-type", name: "type" },
    h("option", { value: "" }, "Any type"),
    all.map((t) => h("option", { value: t.id }, `${t.display_name || t.id} (${t.id})`)),
  );
  if (state.type && !typeName.has(state.type)) typeSel.append(h("option", { value: state.type }, state.type));
  typeSel.value = state.type;
  const tag = h("input", { id: "flt-tag", type: "text", name: "tag", value: state.tag, autocomplete: "off", spellcheck: "false" });
  const health = h(
    "select",
    { id: "flt-health", name: "health" },
    h("option", { value: "" }, "Any health"),
    HEALTHS.map((x) => h("option", { value: x }, x)),
  );
  health.value = state.health;
  const deleted = h("input", { id: "flt-deleted", type: "checkbox", name: "include_deleted", checked: state.include_deleted });
  const refresh = h("button", { type: "button" }, "Refresh");

  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter credentials" },
    labelled("flt-name", "Search by name", search),
    labelled("flt-type", "Type", typeSel),
    labelled("flt-tag", "Tag", tag),
    labelled("flt-health", "Health", health),
    h("div", { class: "check-filter" }, h("div", { class: "check" }, deleted, h("label", { for: "flt-deleted" }, "Show deleted"))),
    h("div", { class: "filter-actions" }, refresh),
  );

  const count = h("p", { class: "muted", id: "count", role: "status" });
  const results = h("div", { id: "results", "aria-busy": "false" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });

  replace(
    main,
    h("h1", {}, "Credentials"),
    filters,
    count,
    results,
    pager,
  );

  let seq = 0;
  async function load() {
    const mine = ++seq;
    results.setAttribute("aria-busy", "true");
    if (!results.firstChild) replace(results, h("p", { class: "muted" }, spinner(), " Loading…"));
    let page;
    try {
      page = await api(
        "GET",
        query("/api/credentials", { ...params(state), limit: PAGE }),
      );
    } catch (e) {
      if (mine !== seq || !isCurrent()) return;
      results.setAttribute("aria-busy", "false");
      replace(count);
      replace(pager);
      replace(results, errorBox(e));
      return;
    }
    if (mine !== seq || !isCurrent()) return;
    results.setAttribute("aria-busy", "false");
    show(page);
  }

  function show(page) {
    const items = page.items || [];
    const total = page.total || 0;
    replace(count, total === 1 ? "1 credential" : `${total} credentials`);
    const filtered = FILTERS.some((k) => state[k]);
    if (!items.length) {
      replace(
        results,
        state.cursor
          ? h("p", { class: "empty" }, "No more credentials on this page.")
          : filtered
            ? h("p", { class: "empty" }, "No credentials match these filters. ", h("a", { href: "#/add" }, "Add a credential"), ".")
            : h("p", { class: "empty" }, "No credentials yet. ", h("a", { href: "#/add" }, "Add your first credential"), "."),
      );
    } else {
      replace(results, table(items));
    }
    const buttons = [];
    if (state.cursor) {
      buttons.push(h("button", { type: "button", on: { click: () => change({ cursor: "" }, true) } }, "First page"));
      if (back.length)
        buttons.push(h("button", { type: "button", on: { click: () => change({ cursor: back.pop() }, true, true) } }, "Previous page"));
    }
    if (page.next_cursor) {
      buttons.push(
        h("button", { type: "button", on: { click: () => (back.push(state.cursor), change({ cursor: page.next_cursor }, true, true)) } }, "Next page"),
      );
    }
    replace(pager, buttons);
  }

  function table(items) {
    return h(
      "table",
      { class: "stack credentials" },
      h(
        "thead",
        {},
        h("tr", {}, ["Name", "Type", "Environment", "Tags", "Health", "Last tested"].map((c) => h("th", { scope: "col" }, c))),
      ),
      h(
        "tbody",
        {},
        items.map((c) => {
          const tested = c.last_test ? c.last_test.at || c.last_test.tested_at : null;
          return h(
            "tr",
            { dataset: { id: c.id }, class: c.deleted_at ? "deleted" : null },
            h(
              "td",
              { dataset: { label: "Name" } },
              h("a", { href: `#/credentials/${encodeURIComponent(c.id)}` }, c.name),
              c.deleted_at ? [" ", h("span", { class: "marker-deleted", title: `Deleted ${fmtTime(c.deleted_at)}` }, "deleted")] : null,
            ),
            h("td", { dataset: { label: "Type" }, title: c.type }, typeName.get(c.type) || c.type),
            h("td", { dataset: { label: "Environment" } }, c.environment || "—"),
            h("td", { dataset: { label: "Tags" } }, (c.tags || []).length ? c.tags.map((t) => h("span", { class: "tag" }, t)) : "—"),
            h("td", { dataset: { label: "Health" } }, badge(c.health)),
            h("td", { dataset: { label: "Last tested" } }, tested ? h("time", { datetime: tested }, fmtTime(tested)) : "never"),
          );
        }),
      ),
    );
  }

  /** Applies a filter change: the hash follows (without re-rendering the page), the
   *  list reloads. `push`: a new history entry (back returns to the previous view). */
  function change(patch, push, keepBack) {
    Object.assign(state, patch);
    if (!("cursor" in patch)) state.cursor = "";
    if (!keepBack) back.length = 0;
    const hash = hashFor(state);
    if (hash !== location.hash) {
      if (push) history.pushState(null, "", hash);
      else history.replaceState(null, "", hash);
    }
    load();
  }

  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => change({ name_prefix: search.value }, false), 300);
  });
  filters.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    change({ name_prefix: search.value, tag: tag.value.trim() }, true);
  });
  tag.addEventListener("change", () => change({ tag: tag.value.trim() }, true));
  typeSel.addEventListener("change", () => change({ type: typeSel.value }, true));
  health.addEventListener("change", () => change({ health: health.value }, true));
  deleted.addEventListener("change", () => change({ include_deleted: deleted.checked }, true));
  refresh.addEventListener("click", () => load());

  await load();
});
