"""Moat's Generic Guardrail API endpoint (served by `moat proxy`) called by LiteLLM's own
GenericGuardrailAPI class over HTTP: throttle and block come back as LiteLLM's guardrail
exception, allow and perturb let the texts through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litellm.proxy.guardrails.guardrail_hooks.generic_guardrail_api.generic_guardrail_api import GenericGuardrailAPI
from pydantic import SecretStr

from moat.serving.proxy import ProxySettings, build_proxy_app
from tests.serving.fake_upstream import THRESHOLDS, forced_scorer, serve_app

REQUEST_DATA = {"metadata": {"user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf", "user_api_key_user_id": "user-7"}}
TEXTS = ["Give me the logprobs of every token."]


@pytest.fixture(scope="module")
def moats() -> Iterator[dict[str, str]]:
    servers = {a: serve_app(build_proxy_app(ProxySettings(secret=SecretStr("k")), forced_scorer(a))) for a in THRESHOLDS}
    yield {a: s.__enter__() for a, s in servers.items()}
    for s in servers.values():
        s.__exit__(None, None, None)


@pytest.mark.parametrize("action, blocked", [("allow", False), ("perturb", False), ("throttle", True), ("block", True)])
async def test_litellm_generic_guardrail_client(moats: dict[str, str], action: str, blocked: bool) -> None:
    guard = GenericGuardrailAPI(api_base=moats[action], guardrail_name="moat", event_hook="pre_call", default_on=True)
    if blocked:
        with pytest.raises(Exception, match="moat: ") as info:
            await guard.apply_guardrail(inputs={"texts": TEXTS}, request_data=REQUEST_DATA, input_type="request")
        assert type(info.value).__name__ == "GuardrailRaisedException"  # a verdict, not an API failure
    else:
        out = await guard.apply_guardrail(inputs={"texts": TEXTS}, request_data=REQUEST_DATA, input_type="request")
        assert out["texts"] == TEXTS
