"""With authentication on: the caller's grammar, spoken refusals, the same reason as REST."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip(
    "nexus_plugin_api",
    reason="the voice channel is served by nexus-plugin-api, which is not installed",
)
from api_support import serving
from voice_apps import build
from voice_support import require_audio_tools, speak

pytestmark = pytest.mark.anyio

JSON = {"accept": "application/json"}

SECURITY = {
    "security": {
        "auth_enabled": True,
        "providers": ["api_key"],
        "strategy": "hybrid",
        "roles": {
            "greeter": [
                "workflow:greet:execute",
                "workflow:shipping:execute",
                "runs:read",
                "runs:cancel",
            ]
        },
        "policies": [
            {
                "description": "no express parcels by voice",
                "effect": "deny",
                "actions": ["workflow:shipping:execute"],
                "conditions": [{"attribute": "input.express", "op": "eq", "value": True}],
            }
        ],
    }
}


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_audio_tools()


async def test_callers_hear_only_what_they_may_run_and_refusals_give_the_core_reason():
    app = build(services=SECURITY)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        key, _record = await app.security.issue_api_key("robin", roles=["greeter"])
        me = {"x-api-key": key}

        anonymous = await http.post("/voice", content=speak("greet ada"), headers=JSON)
        assert anonymous.status_code == 401 and anonymous.json()["field"] == "body"

        grammar = (await http.get("/voice/grammar", headers=me)).text
        assert "greet" in grammar and "quote" not in grammar and "add to cart" not in grammar

        # "quote" is not in this caller's grammar: it cannot be run, nor even heard.
        body = (
            await http.post("/voice", content=speak("quote two mugs"), headers={**me, **JSON})
        ).json()
        assert body.get("run") is None and body["outcome"] in ("not_understood", "low_confidence")

        said = "ship two hundred and fifty grams to france express"
        body = (await http.post("/voice", content=speak(said), headers={**me, **JSON})).json()
        assert body["transcript"] == said, body
        assert body["outcome"] == "forbidden" and body.get("run") is None
        rest = await http.post(
            "/workflows/shipping/runs",
            json={"weight_grams": 250, "country": "FR", "express": True},
            headers=me,
        )
        assert rest.status_code == 403
        assert body["error"]["message"] == rest.json()["detail"]
        assert body["reply"] == f"Sorry, {rest.json()['detail']}"

        ok = (
            await http.post("/voice", content=speak("greet grace"), headers={**me, **JSON})
        ).json()
        assert ok["outcome"] == "completed"
        run = (await http.get(f"/runs/{ok['run']['run_id']}", headers=me)).json()
        assert run["output"] == "Hello, Grace."
