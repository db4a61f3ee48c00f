"""LangChain's standard test suites, for both providers.

The unit suite runs in full. The integration suite runs against the emulator over a real
socket; tests that judge the model's intelligence (not our integration) run live only, see
``LIVE_ONLY`` and the README.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_llamavision import ChatLlamaVision

LIVE_ONLY = {
    "test_tool_calling": "checks that the model read the argument 3 out of the question",
    "test_tool_calling_async": "checks that the model read the argument 3 out of the question",
    "test_json_mode": "checks that the model used the JSON keys the prompt describes in prose",
    "test_unicode_tool_call_integration": "checks that the model copied text into arguments",
    "test_image_inputs": "the test itself downloads its image from the internet",
}


class _Params:
    provider = "aigateway"

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatLlamaVision

    @property
    def chat_model_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"provider": self.provider, "max_retries": 1}
        if self.provider == "cloudflare":
            params.update(accept_license=True, account_id="emulator-account")
        return params

    @property
    def has_tool_choice(self) -> bool:
        return self.provider == "aigateway"  # Workers AI has no tool_choice

    @property
    def supports_json_mode(self) -> bool:
        return self.provider == "aigateway"

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class _Unit(_Params, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {**super().chat_model_params, "api_key": "test-key"}


class TestAIGatewayUnit(_Unit):
    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"AIGATEWAY_API_KEY": "env-key"}, {}, {"api_key": "env-key"}


class TestCloudflareUnit(_Unit):
    provider = "cloudflare"

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"CLOUDFLARE_API_TOKEN": "env-token", "CLOUDFLARE_ACCOUNT_ID": "acc"},
            {"provider": "cloudflare"},
            {"api_key": "env-token"},
        )


class _Integration(_Params, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _against_emulator(self, request: pytest.FixtureRequest) -> None:
        reason = LIVE_ONLY.get(request.node.originalname)
        if reason:
            pytest.skip(f"live only: {reason}")
        request.getfixturevalue("emulator")


class TestAIGatewayIntegration(_Integration):
    pass


# Workers AI has no stop sequences: they are dropped with a warning (asserted in the codec
# tests); here only that exact, expected warning is let through.
@pytest.mark.filterwarnings("ignore:cloudflare does not support stop")
class TestCloudflareIntegration(_Integration):
    provider = "cloudflare"


_LIVE = os.environ.get("AIGATEWAY_API_KEY") and not os.environ.get("AIGATEWAY_BASE_URL")


@pytest.mark.live
@pytest.mark.skipif(not _LIVE, reason="set AIGATEWAY_API_KEY to run against the real service")
class TestAIGatewayLive(_Params, ChatModelIntegrationTests):
    pass


_LIVE_CF = (
    os.environ.get("CLOUDFLARE_API_TOKEN")
    and os.environ.get("CLOUDFLARE_ACCOUNT_ID")
    and not os.environ.get("CLOUDFLARE_BASE_URL")
)


@pytest.mark.live
@pytest.mark.skipif(not _LIVE_CF, reason="set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN")
class TestCloudflareLive(_Params, ChatModelIntegrationTests):
    provider = "cloudflare"

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"provider": "cloudflare", "accept_license": True}
