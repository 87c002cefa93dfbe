// Forms generated from a credential type's descriptor, and the "Add credential" page.
// The helpers here (one control per field, the common name/description/tags/environment
// controls, showing the server's field errors) are shared with the detail page's edit form.
//
// A control is `{ name, common, el, input, read(), setError(msg|null), clear() }`: `el` is
// the whole block (label, input, help, error) to put in a form, `input` the element to
// focus, `common` true for the credential's own name/description/tags/environment.

import { ApiFailure, api, errorBox, go, h, notice, replace, route, spinner, types } from "./core.js";

/** The element ids of a control: input `<prefix><name>`, help `help-<…>`, error `err-<…>`.
 *  Type fields use the prefix `f-` (`f-host`, `err-host`); the common controls `cred-`
 *  (`cred-name`, `err-cred-name`), because a type may have a field called `name`. */
function ids(name, prefix) {
  const base = prefix === "cred-" ? `cred-${name}` : name;
  return { input: `${prefix || "f-"}${name}`, help: `help-${base}`, err: `err-${base}` };
}

/** The label: the text, then a red star for required inputs (the input says `required`).
 *  The star is drawn by the stylesheet (`.req::after`), so the label's text stays exactly
 *  the field's label (what `getByLabel` and assistive technology match on). */
function labelFor(id, text, required, cls) {
  return h("label", { for: id, class: cls }, text, required ? h("span", { class: "req", "aria-hidden": "true" }) : null);
}

/** Wraps an input into a control with its label, help and error slot. `read` gives the
 *  value to send; `clearFn` empties what must not stay in the page. */
function control(name, input, labelEl, helpText, read, clearFn, opts) {
  const id = ids(name, opts && opts.prefix);
  const help = helpText ? h("p", { class: "help", id: id.help }, helpText) : null;
  const describedBy = () => [help ? id.help : null, input.getAttribute("aria-invalid") === "true" ? id.err : null].filter(Boolean).join(" ");
  const isCheck = opts && opts.check;
  const el = isCheck
    ? h("div", { class: "field field-check", dataset: { field: name } }, h("div", { class: "check" }, input, labelEl), help)
    : h("div", { class: "field", dataset: { field: name } }, labelEl, input, help);
  if (help) input.setAttribute("aria-describedby", id.help);
  let errEl = null;
  return {
    name,
    common: !!(opts && opts.common),
    el,
    input,
    read,
    clear: clearFn || (() => {}),
    setError(msg) {
      if (errEl) errEl.remove();
      errEl = null;
      if (msg === null || msg === undefined || msg === "") {
        input.removeAttribute("aria-invalid");
      } else {
        errEl = h("p", { class: "field-error", id: id.err, role: "alert" }, String(msg));
        // Right after the input (after the checkbox and its label for a checkbox).
        (isCheck ? labelEl.parentNode : input).after(errEl);
        input.setAttribute("aria-invalid", "true");
      }
      const d = describedBy();
      if (d) input.setAttribute("aria-describedby", d);
      else input.removeAttribute("aria-describedby");
    },
  };
}

/** Text of a stored value for an input ("" for none). */
function asText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return ""; // a secret's {set, fingerprint}: never a value
  return String(v);
}

/**
 * One input for a descriptor field `spec` (`{name, label, kind, secret, required, help,
 * choices, default}`).
 * opts:
 *  - `value`: the current (non-secret) value to show. When the `value` key is absent and
 *    this is not an edit form, the descriptor's default is shown instead.
 *  - `secretOptional`: an edit form: an empty secret keeps the stored one (not required).
 *    Also turns off the descriptor defaults.
 *  - `nullWhenEmpty`: `read()` gives `null` (remove the value) instead of `undefined` for an
 *    empty optional non-secret input (edit forms use it to clear a field).
 * `read()`: a string; a Number for `number` kind; true/false for `boolean`; undefined when
 * empty (so the member is left out of the request body).
 */
export function fieldControl(spec, opts) {
  opts = opts || {};
  const name = spec.name;
  const id = ids(name).input;
  const kind = spec.kind || "text";
  const keepSecret = !!(spec.secret && opts.secretOptional);
  const required = !!spec.required && !keepSecret;
  const useDefault = !("value" in opts) && !opts.secretOptional;
  const initial = spec.secret ? "" : asText("value" in opts ? opts.value : useDefault ? spec.default : undefined);
  const common = {
    id,
    name,
    required,
    "aria-required": required ? "true" : null,
  };
  let input;
  let check = false;
  if (spec.secret) {
    input = kind === "multiline"
      ? h("textarea", { ...common, class: "secret", autocomplete: "off", spellcheck: "false", rows: 6 })
      : h("input", { ...common, type: "password", autocomplete: "new-password", spellcheck: "false" });
  } else if (kind === "multiline") {
    input = h("textarea", { ...common, rows: 4, value: initial });
  } else if (kind === "choice") {
    const choices = spec.choices || [];
    input = h(
      "select",
      common,
      required && choices.includes(initial) ? null : h("option", { value: "" }, required ? "Choose…" : "(none)"),
      choices.map((c) => h("option", { value: c, selected: c === initial }, c)),
    );
    input.value = choices.includes(initial) ? initial : "";
  } else if (kind === "number") {
    input = h("input", { ...common, type: "number", step: "any", inputmode: "decimal", value: initial });
  } else if (kind === "boolean") {
    check = true;
    // A checkbox always has a value, so it is never "required".
    input = h("input", { id, name, type: "checkbox", checked: initial === "true" });
  } else if (kind === "url") {
    input = h("input", { ...common, type: "url", inputmode: "url", spellcheck: "false", value: initial });
  } else {
    input = h("input", { ...common, type: "text", spellcheck: "false", value: initial });
  }
  const helpParts = [spec.help || "", keepSecret ? "Leave empty to keep the stored secret." : ""].filter(Boolean);
  const label = labelFor(id, spec.label || name, required && !check);
  const empty = () => (!spec.secret && !required && opts.nullWhenEmpty ? null : undefined);
  const read = () => {
    if (check) return input.checked;
    const v = input.value;
    if (v === "") return empty();
    if (kind === "number") {
      const n = Number(v);
      return Number.isFinite(n) ? n : v;
    }
    return v;
  };
  const clear = () => {
    if (spec.secret) input.value = "";
  };
  return control(name, input, label, helpParts.join(" "), read, clear, { check });
}

/** Tags typed as "a, b, c": trimmed, empty ones dropped. */
function splitTags(text) {
  return text.split(",").map((t) => t.trim()).filter((t) => t !== "");
}

/**
 * The controls every credential has: Name (required), Description, Tags (comma-separated),
 * and Environment when the type has environments (required then). Values prefill them.
 * `read()`: name and description as typed (strings), tags as an array, environment as the
 * chosen one (undefined when none).
 */
export function commonControls(values, descriptor) {
  values = values || {};
  const out = [];
  const C = { prefix: "cred-", common: true };
  const nameInput = h("input", {
    id: "cred-name",
    name: "name",
    type: "text",
    required: true,
    "aria-required": "true",
    autocomplete: "off",
    spellcheck: "false",
    value: asText(values.name),
  });
  out.push(control("name", nameInput, labelFor("cred-name", "Name", true), "A unique name, e.g. prod-db or alpaca-paper.", () => nameInput.value, null, C));

  const desc = h("textarea", { id: "cred-description", name: "description", rows: 2, value: asText(values.description) });
  out.push(control("description", desc, labelFor("cred-description", "Description", false), null, () => desc.value, null, C));

  const tags = h("input", {
    id: "cred-tags",
    name: "tags",
    type: "text",
    autocomplete: "off",
    spellcheck: "false",
    value: Array.isArray(values.tags) ? values.tags.join(", ") : asText(values.tags),
  });
  out.push(control("tags", tags, labelFor("cred-tags", "Tags", false), "Comma-separated, e.g. prod, trading.", () => splitTags(tags.value), null, C));

  const envs = (descriptor && descriptor.environments) || [];
  if (envs.length) {
    const current = asText(values.environment);
    const sel = h(
      "select",
      { id: "cred-environment", name: "environment", required: true, "aria-required": "true" },
      envs.includes(current) ? null : h("option", { value: "" }, "Choose…"),
      envs.map((e) => h("option", { value: e, selected: e === current }, e)),
    );
    sel.value = envs.includes(current) ? current : "";
    out.push(control("environment", sel, labelFor("cred-environment", "Environment", true), null, () => sel.value || undefined, null, C));
  }
  return out;
}

/** Messages of the server's own name check (and name conflicts), as opposed to a type's
 *  check of a field that happens to be called `name` too (api_key has one). */
const NAME_CHECK = /already exists|soft-deleted|must not be empty|must be at most \d+ bytes|whitespace|U\+[0-9A-F]{4}/;

/** The control a server field name (`name`, `tags[2]`, `fields.host`, `host`) belongs to. */
function controlFor(controls, field, message, failure) {
  let key = String(field);
  let typed = false;
  if (key.startsWith("fields.")) {
    key = key.slice(7);
    typed = true;
  }
  const m = /^fields\[["']?([^\]"']+)["']?\]$/.exec(key);
  if (m) {
    key = m[1];
    typed = true;
  }
  const base = key.replace(/\[\d+\]$/, "");
  let found = controls.filter((c) => c.name === key);
  if (!found.length) found = controls.filter((c) => c.name === base);
  if (found.length > 1) {
    // The credential's own member and a type field share the name: the server's name
    // check (and a name conflict) speaks of the credential, anything else of the field.
    const own = !typed && (failure && failure.status === 409 || NAME_CHECK.test(String(message)));
    found = found.filter((c) => !!c.common === own);
  }
  return found[0] || null;
}

/**
 * Shows a failed request: each field error next to its control, anything else (errors
 * for fields without an input, or no field errors at all) as a box in `formErrorSlot`.
 * Clears earlier errors first and focuses the first invalid input. `controls`: an array
 * of controls (or an object of them).
 */
export function showErrors(controls, failure, formErrorSlot) {
  const list = Array.isArray(controls) ? controls : Object.values(controls || {});
  for (const c of list) c.setError(null);
  if (formErrorSlot) replace(formErrorSlot);
  const fields = (failure instanceof ApiFailure && failure.fields) || {};
  const byControl = new Map();
  const unmatched = [];
  for (const [field, message] of Object.entries(fields)) {
    const c = controlFor(list, field, message, failure);
    if (!c) {
      unmatched.push([field, message]);
      continue;
    }
    const tag = /^tags\[(\d+)\]$/.exec(field);
    const text = tag ? `Tag ${Number(tag[1]) + 1}: ${message}` : message;
    byControl.set(c, [...(byControl.get(c) || []), text]);
  }
  for (const [c, msgs] of byControl) c.setError(msgs.join(" "));
  if (formErrorSlot && (unmatched.length || byControl.size === 0)) {
    replace(
      formErrorSlot,
      errorBox(failure),
      unmatched.length ? h("ul", { class: "error" }, unmatched.map(([f, m]) => h("li", {}, h("code", {}, f), ": ", m))) : null,
    );
  }
  const first = list.find((c) => byControl.has(c));
  if (first) first.input.focus();
  else if (formErrorSlot && formErrorSlot.firstChild) {
    formErrorSlot.setAttribute("tabindex", "-1");
    formErrorSlot.focus();
  }
}

// ---- the "Add credential" page -------------------------------------------------------

route("#/add", async (args, main, isCurrent) => {
  const all = await types();
  if (!isCurrent()) return;
  const list = [...all].sort((a, b) => String(a.display_name || a.id).localeCompare(String(b.display_name || b.id)));

  const typeSelect = h(
    "select",
    { id: "cred-type", name: "type", required: true, "aria-required": "true", "aria-describedby": "type-about" },
    h("option", { value: "" }, "Choose a type…"),
    list.map((t) => h("option", { value: t.id }, `${t.display_name || t.id} (${t.id})`)),
  );
  const about = h("p", { class: "help", id: "type-about" });
  const fieldsBox = h("div", { class: "type-fields" });
  const errorSlot = h("div", { class: "form-error" });
  const submit = h("button", { type: "submit", class: "primary", disabled: true }, "Create credential");
  const form = h(
    "form",
    { class: "card form", "aria-labelledby": "add-title", autocomplete: "off" },
    h("div", { class: "field", dataset: { field: "type" } }, labelFor("cred-type", "Type", true), typeSelect, about),
    fieldsBox,
    errorSlot,
    h("div", { class: "actions" }, submit),
  );

  let descriptor = null;
  let controls = [];

  const currentValues = () => {
    const v = {};
    for (const c of controls) {
      if (c.common && ["name", "description", "tags"].includes(c.name)) v[c.name] = c.input.value;
    }
    return v;
  };

  const showType = (id) => {
    const keep = currentValues();
    for (const c of controls) c.clear();
    descriptor = list.find((t) => t.id === id) || null;
    replace(errorSlot);
    if (!descriptor) {
      controls = [];
      replace(about);
      replace(fieldsBox, h("p", { class: "muted" }, "Choose a type to see its fields."));
      submit.disabled = true;
      return;
    }
    replace(about, descriptor.description || "", descriptor.version ? ` (version ${descriptor.version})` : "");
    const common = commonControls(keep, descriptor);
    const typed = (descriptor.fields || []).map((f) => fieldControl(f, {}));
    controls = [...common, ...typed];
    replace(
      fieldsBox,
      common.map((c) => c.el),
      typed.length ? h("fieldset", { class: "type-fieldset" }, h("legend", {}, `${descriptor.display_name || descriptor.id} fields`), typed.map((c) => c.el)) : null,
    );
    submit.disabled = false;
  };

  typeSelect.addEventListener("change", () => {
    showType(typeSelect.value);
    const hash = typeSelect.value ? `#/add?type=${encodeURIComponent(typeSelect.value)}` : "#/add";
    history.replaceState(null, "", hash);
  });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!descriptor || submit.disabled) return;
    const body = { type: descriptor.id, fields: {} };
    for (const c of controls) {
      const v = c.read();
      if (!c.common) {
        if (v !== undefined && v !== null) body.fields[c.name] = v;
      } else if (c.name === "name") body.name = v;
      else if (c.name === "description") {
        if (v) body.description = v;
      } else if (c.name === "tags") {
        if (v.length) body.tags = v;
      } else if (c.name === "environment") {
        if (v !== undefined) body.environment = v;
      }
    }
    submit.disabled = true;
    const sp = spinner();
    submit.prepend(sp);
    submit.setAttribute("aria-busy", "true");
    let created;
    try {
      created = await api("POST", "/api/credentials", body);
    } catch (e) {
      sp.remove();
      submit.disabled = false;
      submit.removeAttribute("aria-busy");
      showErrors(controls, e, errorSlot);
      return;
    } finally {
      // The request body held the secrets: drop the reference.
      body.fields = null;
    }
    for (const c of controls) c.clear();
    form.remove();
    notice(`Created ${created.name}.`);
    go(`#/credentials/${encodeURIComponent(created.id)}`);
  });

  replace(
    main,
    h("h1", { id: "add-title" }, "Add credential"),
    h("p", { class: "muted" }, "Secret fields are sent to the server once and never shown again."),
    form,
  );
  const wanted = args.type && list.some((t) => t.id === args.type) ? args.type : "";
  typeSelect.value = wanted;
  showType(wanted);
  typeSelect.focus();
});
