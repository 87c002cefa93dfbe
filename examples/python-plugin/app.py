"""Example credential type in Python: an account name plus an API token for a service
whose `GET {base_url}/v1/me` answers 200 for a good token and 401/403 for a bad one.
"""
import json
import string
from typing import List

import wit_world
from wit_world.imports import http, types

import credhost_sdk as credhost


def descriptor() -> types.Descriptor:
    return types.Descriptor(
        id="python_example",
        display_name="Example service token (Python)",
        version="0.1.0",
        description="An account name and API token for the Example service, checked by a Python plugin.",
        fields=[
            credhost.text("account", "Account", required=True, help="Your account name, lower-case letters and digits."),
            credhost.secret("api_token", "API token", required=True, help="Starts with ex_ and is at least 20 characters."),
            credhost.url("base_url", "Base URL", default="https://api.example.com", help="Where the service's API lives."),
        ],
        environments=[],
    )


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return descriptor()

    def validate(self, input: List[types.FieldValue]) -> List[types.FieldValue]:
        form = credhost.Form(descriptor(), input)
        account = form.get("account")
        if account is not None and set(account) - set(string.ascii_lowercase + string.digits):
            form.error("account", "account must be lower-case letters and digits.")
        token = form.get("api_token")
        if token is not None and (not token.startswith("ex_") or len(token) < 20):
            form.error("api_token", "api_token must start with ex_ and be at least 20 characters.")
        return form.finish()

    def test(self, ctx: types.TestContext) -> types.TestOutcome:
        """The host fills in `{api_token}`; this plugin never sees the value."""
        fields = credhost.fields_of(ctx)
        base = fields.get("base_url", "https://api.example.com").rstrip("/")
        auth = [("Authorization", credhost.template("Bearer {api_token}"))]
        response = credhost.send(credhost.get(base + "/v1/me", headers=auth))
        outcome = credhost.auth_verdict(response)
        if outcome.status != types.TestStatus.VALID:
            return outcome
        # What proves the token is the account payload, not only the status code.
        try:
            me = json.loads(response.body)
        except ValueError:
            return credhost.indeterminate("unexpected answer: /v1/me did not return JSON")
        account = me.get("account") if isinstance(me, dict) else None
        if account != fields.get("account"):
            return credhost.invalid("the token belongs to another account", http_status=response.status)
        outcome.facts.append(types.Fact(key="account", value=credhost.clip(str(account))))
        return outcome

    def authenticate(self, ctx: types.TestContext) -> http.AuthPlan:
        return http.AuthPlan(headers=[("Authorization", credhost.template("Bearer {api_token}"))], query=[])
