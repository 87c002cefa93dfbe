"""Guest-side helpers for credhost credential types written in Python (componentize-py).

The Python counterpart of the Rust `credhost-sdk`, trimmed to what removes real
boilerplate: field specs with defaults, a `Form` that does the checks every `validate`
needs, request values and builders, and the usual HTTP verdict. Copy it beside your
`app.py`; it needs only the bindings componentize-py generates for `credential-type`.
"""
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import http, types

ENVIRONMENT = "environment"
DEFAULT_TIMEOUT_MS = 10_000


# --- field specs -------------------------------------------------------------------

def spec(name: str, label: str, kind: types.FieldKind, *, secret: bool = False, required: bool = False,
         help: str = "", choices: Optional[List[str]] = None, default: Optional[str] = None) -> types.FieldSpec:
    return types.FieldSpec(name=name, label=label, kind=kind, secret=secret, required=required,
                           help=help, choices=list(choices or []), default=default)


def text(name: str, label: str, **kw) -> types.FieldSpec:
    return spec(name, label, types.FieldKind.TEXT, **kw)


def secret(name: str, label: str, **kw) -> types.FieldSpec:
    """A secret single-line field: encrypted at rest, never shown back, named in `test`."""
    return spec(name, label, types.FieldKind.TEXT, secret=True, **kw)


def url(name: str, label: str, **kw) -> types.FieldSpec:
    return spec(name, label, types.FieldKind.URL, **kw)


def choice(name: str, label: str, choices: List[str], **kw) -> types.FieldSpec:
    return spec(name, label, types.FieldKind.CHOICE, choices=choices, **kw)


# --- validate ----------------------------------------------------------------------

class Form:
    """`validate` input checked against the descriptor.

    On construction: unknown and repeated fields, the environment, and the syntax each
    field kind promises. Add your own problems with `error`; `finish` adds missing
    required fields and returns the normalised list (descriptor order, trimmed, defaults
    filled, blank optional fields left out) or raises `Err(list of field errors)`, which
    componentize-py turns into the `err` of `validate`'s result. Messages name the field
    and never repeat its value.
    """

    def __init__(self, descriptor: types.Descriptor, input: List[types.FieldValue]):
        self.descriptor = descriptor
        self.specs: Dict[str, types.FieldSpec] = {f.name: f for f in descriptor.fields}
        self.values: Dict[str, str] = {}
        self.environment: Optional[str] = None
        self.errors: List[types.FieldError] = []
        seen = set()
        for fv in input:
            name = fv.name[:64]
            if fv.name in seen:
                self.error(name, f"{name} is given more than once.")
                continue
            seen.add(fv.name)
            if fv.name == ENVIRONMENT:
                self._environment(fv.value)
            elif fv.name not in self.specs:
                known = ", ".join(self.specs)
                self.error(name, f"{name} is not a field of this type; its fields are: {known}.")
            else:
                problem = _check(self.specs[fv.name], fv.value)
                if problem:
                    self.error(name, problem)
                else:
                    self.values[fv.name] = fv.value

    def get(self, name: str) -> Optional[str]:
        """The trimmed value, or the default when absent or blank."""
        value = self.values.get(name, "").strip()
        return value if value else self.specs[name].default

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def has_error(self, name: str) -> bool:
        return any(e.field == name for e in self.errors)

    def error(self, name: str, message: str) -> None:
        self.errors.append(types.FieldError(field=name, message=message))

    def finish(self) -> List[types.FieldValue]:
        out = []
        for f in self.descriptor.fields:
            value = self.get(f.name)
            if value is not None:
                out.append(types.FieldValue(name=f.name, value=value))
            elif f.required and not self.has_error(f.name):
                self.error(f.name, f"{f.name} is required.")
        if self.errors:
            order = {f.name: i for i, f in enumerate(self.descriptor.fields)}
            raise Err(sorted(self.errors, key=lambda e: order.get(e.field, len(order))))
        return out

    def _environment(self, value: str) -> None:
        envs = self.descriptor.environments
        value = value.strip()
        if not value:
            return
        if not envs:
            self.error(ENVIRONMENT, "this type has no environments; leave environment unset.")
            return
        match = [e for e in envs if e.lower() == value.lower()]
        if match:
            self.environment = match[0]
        else:
            self.error(ENVIRONMENT, f"environment must be one of: {', '.join(envs)}.")


def _check(f: types.FieldSpec, value: str) -> Optional[str]:
    """The problem with `value` for the field's kind, phrased without the value."""
    v = value.strip()
    if f.kind == types.FieldKind.TEXT and any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in v):
        return f"{f.name} must be a single line without control characters."
    if f.kind == types.FieldKind.MULTILINE and any(ord(c) < 32 and c not in "\t\n\r" or ord(c) == 127 for c in v):
        return f"{f.name} must not contain control characters."
    if not v or f.kind in (types.FieldKind.TEXT, types.FieldKind.MULTILINE):
        return None
    if f.kind == types.FieldKind.NUMBER:
        try:
            int(v)
        except ValueError:
            return f"{f.name} must be a whole number."
    elif f.kind == types.FieldKind.BOOLEAN:
        if v.lower() not in ("true", "false"):
            return f"{f.name} must be true or false."
    elif f.kind == types.FieldKind.CHOICE:
        if v.lower() not in (c.lower() for c in f.choices):
            return f"{f.name} must be one of: {', '.join(f.choices)}."
    elif f.kind == types.FieldKind.URL:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or rest[0] in "/?#":
            return f"{f.name} must be an absolute http:// or https:// URL."
        if any(ord(c) <= 32 or ord(c) >= 127 for c in v):
            return f"{f.name} must not contain spaces, control or non-ASCII characters."
        if "@" in rest.split("/", 1)[0]:
            return f"{f.name} must not contain a user name or password; use the credential's fields for those."
    return None


# --- test and authenticate -----------------------------------------------------------

def fields_of(ctx: types.TestContext) -> Dict[str, str]:
    """The credential's non-secret fields as a dict (secret ones are only named)."""
    return {f.name: f.value for f in ctx.fields}


def plain(value: str) -> http.Value:
    return http.Value_Plain(value)


def field(name: str) -> http.Value:
    """The value of field `name` (secret or not), filled in by the host."""
    return http.Value_Field(name)


def template(text: str) -> http.Value:
    """Text with `{field}` placeholders the host fills in; `{{`/`}}` are literal braces."""
    return http.Value_Template(text)


def basic(user: str, password: str) -> http.Value:
    """`Basic base64(user:password)`; both parts are templates such as "{username}"."""
    return http.Value_Basic((user, password))


Pairs = List[Tuple[str, http.Value]]


def request(method: str, url: str, headers: Optional[Pairs] = None, query: Optional[Pairs] = None,
            body: Optional[http.Value] = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> http.Request:
    return http.Request(method=method, url=url, headers=list(headers or []), query=list(query or []),
                        body=body, timeout_ms=timeout_ms)


def get(url: str, **kw) -> http.Request:
    return request("GET", url, **kw)


def send(req: http.Request):
    """`http.send`, returning the response or the host's error (instead of raising it)."""
    try:
        return http.send(req)
    except Err as e:
        return e.value


def outcome(status: types.TestStatus, summary: str, **facts) -> types.TestOutcome:
    return types.TestOutcome(status=status, summary=summary,
                             facts=[types.Fact(key=k, value=str(v)) for k, v in facts.items()])


def valid(summary: str, **facts) -> types.TestOutcome:
    return outcome(types.TestStatus.VALID, summary, **facts)


def invalid(summary: str, **facts) -> types.TestOutcome:
    return outcome(types.TestStatus.INVALID, summary, **facts)


def indeterminate(summary: str, **facts) -> types.TestOutcome:
    return outcome(types.TestStatus.INDETERMINATE, summary, **facts)


def auth_verdict(result) -> types.TestOutcome:
    """The usual reading of an authenticated request: 2xx valid, 401/403 invalid, 429/5xx
    and anything else indeterminate. A host error: `unreachable` reads as indeterminate;
    every other error (denied, rejected by the host's limits) is a fault of the test and
    is raised as the test's `err`."""
    if isinstance(result, types.Error_Unreachable):
        return indeterminate(f"could not reach the service: {clip(result.value)}")
    if not isinstance(result, http.Response):
        raise Err(result)
    s = result.status
    facts = {"http_status": s, "latency_ms": result.latency_ms}
    if 200 <= s <= 299:
        return valid(f"accepted (HTTP {s})", **facts)
    if s in (401, 403):
        return invalid(f"rejected (HTTP {s})", **facts)
    if s == 429:
        return indeterminate("rate limited (HTTP 429); try again later", **facts)
    if 500 <= s <= 599:
        return indeterminate(f"service error (HTTP {s}); try again later", **facts)
    return indeterminate(f"unexpected answer (HTTP {s}); check the URL", **facts)


def clip(text: str, limit: int = 120) -> str:
    """Text from a service made fit for a one-line summary: no control characters, short."""
    out = "".join(c for c in text if ord(c) >= 32 and ord(c) != 127)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def no_http_use(what: str):
    """For `authenticate` of a type with no HTTP use: raise this."""
    return Err(types.Error_Unsupported(f"{what} credentials have no HTTP use"))
