"""RBAC and ABAC decisions agree with a simple reference model (hypothesis, through app.invoke)."""

from __future__ import annotations

import datetime as dt
import fnmatch
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_security import make_app, secured

from nexus_core import Nexus, PermissionDenied
from nexus_core.security import Credentials, Principal

pytestmark = pytest.mark.anyio

WORKFLOWS = ["greet", "add", "report"]
CHANNELS = ["api", "cli", "mcp"]
ROLE_NAMES = ["r0", "r1", "r2", "r3"]
PERMISSIONS = [
    "workflow:greet:execute",
    "workflow:add:execute",
    "workflow:*:execute",
    "workflow:g*:execute",
    "workflow:report:*",
    "runs:read",
    "admin",
    "*",
]
ACTIONS = ["*", "workflow:*:execute", "workflow:greet:execute", "workflow:report:execute", "runs:*"]
CONDITIONS: list[dict[str, Any]] = [
    {"attribute": "principal.dept", "op": "eq", "value": "eng"},
    {"attribute": "principal.dept", "op": "in", "value": ["eng", "ops"]},
    {"attribute": "principal.dept", "op": "ne", "value": "ops"},
    {"attribute": "principal.dept", "op": "exists", "value": True},
    {"attribute": "principal.dept", "op": "exists", "value": False},
    {"attribute": "principal.level", "op": "ge", "value": 2},
    {"attribute": "principal.level", "op": "lt", "value": 3},
    {"attribute": "principal.roles", "op": "contains", "value": "r1"},
    {"attribute": "principal.roles", "op": "in", "value": ["r2", "r3"]},
    {"attribute": "principal.id", "op": "matches", "value": "a*"},
    {"attribute": "channel", "op": "eq", "value": "api"},
    {"attribute": "channel", "op": "not_in", "value": ["mcp"]},
    {"attribute": "tenant", "op": "eq", "value": "acme"},
    {"attribute": "workflow", "op": "eq", "value": "report"},
    {"attribute": "input.amount", "op": "gt", "value": 100},
    {"attribute": "input.amount", "op": "le", "value": 100},
    {"attribute": "input.region", "op": "in", "value": ["eu", "us"]},
    {"attribute": "input.name", "op": "eq", "value": "root"},
    {"attribute": "input.amount", "op": "ge", "value": "100"},  # never comparable: fails closed
    {"attribute": "time.hour", "op": "lt", "value": 12},
    {"attribute": "time.weekday", "op": "in", "value": [5, 6]},
]
INPUTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "greet": st.fixed_dictionaries({"name": st.sampled_from(["ada", "root", "bob"])}),
    "add": st.fixed_dictionaries({"a": st.integers(0, 5), "b": st.integers(0, 5)}),
    "report": st.fixed_dictionaries(
        {
            "amount": st.sampled_from([5.0, 100.0, 250.0]),
            "region": st.sampled_from(["eu", "us", "ap"]),
        }
    ),
}

# -- the reference model: the documented rules, written as plainly as possible ---------------------


MISSING = object()  # the principal or the inputs lack it, or it cannot be compared
UNKNOWN = object()  # the request does not supply it at all (no inputs when listing)


def _attribute(name: str, request: dict[str, Any]) -> Any:
    p: Principal = request["principal"]
    if name == "principal.id":
        return p.id
    if name == "principal.roles":
        return list(p.roles)
    if name.startswith("principal."):
        return p.attributes.get(name.split(".", 1)[1], MISSING)
    if name == "channel":
        return request["channel"]
    if name == "tenant":
        return p.tenant
    if name == "workflow":
        return request["workflow"]
    if name.startswith("input."):
        if request["inputs"] is None:
            return UNKNOWN
        return request["inputs"].get(name.split(".", 1)[1], MISSING)
    now: dt.datetime = request["now"]
    return {"time.hour": now.hour, "time.weekday": now.weekday()}[name]


def _holds(condition: dict[str, Any], request: dict[str, Any]) -> Any:
    """True, False, MISSING or UNKNOWN."""
    value = _attribute(condition["attribute"], request)
    op, want = condition["op"], condition["value"]
    if value is UNKNOWN:
        return UNKNOWN
    if op == "exists":
        return (value is not MISSING) == want
    if value is MISSING:
        return MISSING
    if op == "eq":
        return value == want
    if op == "ne":
        return value != want
    if op in ("in", "not_in"):
        hit = any(v in want for v in value) if isinstance(value, list) else value in want
        return hit if op == "in" else not hit
    if op == "contains":
        return want in value
    if op == "matches":
        return fnmatch.fnmatchcase(value, want)
    if isinstance(value, str) != isinstance(want, str):
        return MISSING  # "900" is not ordered against 500, nor 900 against "500"
    comparisons = {"lt": value < want, "le": value <= want, "gt": value > want, "ge": value >= want}
    return comparisons[op]


def _applies(rule: dict[str, Any], request: dict[str, Any]) -> bool:
    """Every condition holds; a missing one counts as holding iff effect == if_missing."""
    for condition in rule["conditions"]:
        outcome = _holds(condition, request)
        if outcome is True:
            continue
        if outcome is MISSING and rule["effect"] == rule.get("if_missing", "deny"):
            continue
        return False
    return True


def reference(config: dict[str, Any], request: dict[str, Any]) -> bool:
    p: Principal = request["principal"]
    action = f"workflow:{request['workflow']}:execute"

    def grants(pattern: str) -> bool:
        return pattern == "admin" or fnmatch.fnmatchcase(action, pattern)

    if p.scopes and not any(grants(s) for s in p.scopes):
        return False
    roles = [*p.roles, *config.get("default_roles", [])]
    rbac = any(grants(perm) for role in roles for perm in config.get("roles", {}).get(role, []))
    matching = [
        rule
        for rule in config.get("policies", [])
        if any(fnmatch.fnmatchcase(action, a) for a in rule["actions"]) and _applies(rule, request)
    ]
    allow = any(r["effect"] == "allow" for r in matching)
    deny = any(r["effect"] == "deny" for r in matching)
    strategy = config["strategy"]
    if strategy == "rbac":
        return rbac
    if strategy == "abac":
        return allow and not deny
    return (rbac or allow) and not deny


# -- random configurations and requests ------------------------------------------------------------

rules = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(["allow", "deny"]),
        "actions": st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2),
        "conditions": st.lists(st.sampled_from(CONDITIONS), max_size=3),
    },
    optional={"if_missing": st.sampled_from(["deny", "allow"])},
)
role_tables = st.dictionaries(
    st.sampled_from(ROLE_NAMES), st.lists(st.sampled_from(PERMISSIONS), max_size=3), max_size=4
)


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    strategy = draw(st.sampled_from(["rbac", "abac", "hybrid"]))
    roles = {} if strategy == "abac" else draw(role_tables)
    policies = [] if strategy == "rbac" else draw(st.lists(rules, max_size=5))
    allows = any(rule["effect"] == "allow" for rule in policies)
    assume(roles if strategy == "rbac" else allows if strategy == "abac" else roles or allows)
    config: dict[str, Any] = {"strategy": strategy, "roles": roles, "policies": policies}
    if roles and draw(st.booleans()):
        config["default_roles"] = [draw(st.sampled_from(sorted(roles)))]
    return config


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if draw(st.booleans()):
        attributes["dept"] = draw(st.sampled_from(["eng", "ops", "sales"]))
    if draw(st.booleans()):
        attributes["level"] = draw(st.integers(0, 4))
    scopes: tuple[str, ...] = ()
    if draw(st.integers(0, 4)) == 0:
        scopes = tuple(draw(st.lists(st.sampled_from(PERMISSIONS[:5]), min_size=1, max_size=2)))
    principal = Principal(
        id=draw(st.sampled_from(["alice", "bob", "ann"])),
        tenant=draw(st.sampled_from(["acme", "globex"])),
        roles=tuple(draw(st.lists(st.sampled_from(ROLE_NAMES), max_size=3, unique=True))),
        scopes=scopes,
        attributes=attributes,
    )
    workflow = draw(st.sampled_from(WORKFLOWS))
    moment = draw(
        st.datetimes(min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2026, 1, 1))
    )
    return {
        "principal": principal,
        "workflow": workflow,
        "channel": draw(st.sampled_from(CHANNELS)),
        "inputs": draw(INPUTS[workflow]),
        "now": moment.replace(tzinfo=dt.UTC),
    }


POLICY_SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@POLICY_SETTINGS
@given(config=configurations(), batch=st.lists(requests(), min_size=1, max_size=6))
async def test_decisions_agree_with_the_reference_model(
    config: dict[str, Any], batch: list[dict[str, Any]]
) -> None:
    app = make_app(security={"auth_enabled": True, "providers": ["api_key"], **config})
    async with app:
        for request in batch:
            app.security.clock = request["now"].timestamp
            expected = reference(config, request)
            event(f"{config['strategy']}: {'allowed' if expected else 'denied'}")
            try:
                result = await app.invoke_as(
                    request["principal"],
                    request["workflow"],
                    request["inputs"],
                    channel=request["channel"],
                )
            except PermissionDenied:
                assert not expected, request
            else:
                assert expected, request
                assert result.status == "completed"
        denied = sum(
            1 for r in await app.security.query_audit(limit=1000) if r.outcome == "forbidden"
        )
        assert denied == sum(1 for request in batch if not reference(config, request))


@POLICY_SETTINGS
@given(config=configurations(), request=requests())
async def test_visible_workflows_are_those_it_may_execute(
    config: dict[str, Any], request: dict[str, Any]
) -> None:
    app = make_app(security={"auth_enabled": True, "providers": ["api_key"], **config})
    async with app:
        app.security.clock = request["now"].timestamp
        who, channel = request["principal"], request["channel"]
        visible = [wf.name for wf in await app.visible_workflows(who, channel=channel)]
        no_inputs = {**request, "inputs": None}  # listing: conditions on inputs are unknown
        expected = sorted(
            name for name in app.workflows if reference(config, {**no_inputs, "workflow": name})
        )
        assert visible == expected


# -- examples, as a reader would check them --------------------------------------------------------


async def test_rbac_wildcards_and_admin() -> None:
    app = make_app(security=secured())
    async with app:
        greeter, _ = await app.security.issue_api_key("g", roles=["greeter"])
        admin, _ = await app.security.issue_api_key("root", roles=["admin"])
        nobody, _ = await app.security.issue_api_key("n", roles=[])
        assert (await app.invoke("greet", {}, credentials=Credentials(api_key=greeter))).status
        with pytest.raises(PermissionDenied, match="lacks the permission 'workflow:add:execute'"):
            await app.invoke("add", {}, credentials=Credentials(api_key=greeter))
        for name in app.workflows:
            if name != "visit":
                await app.invoke(name, {}, credentials=Credentials(api_key=admin))
        with pytest.raises(PermissionDenied):
            await app.invoke("greet", {}, credentials=Credentials(api_key=nobody))
        who = await app.security.authenticate(Credentials(api_key=greeter), "api")
        assert [wf.name for wf in await app.visible_workflows(who)] == ["greet"]


async def test_hybrid_deny_overrides_roles_and_input_conditions() -> None:
    app = make_app(
        security=secured(
            strategy="hybrid",
            policies=[
                {
                    "effect": "deny",
                    "actions": ["workflow:report:execute"],
                    "conditions": [
                        {"attribute": "input.amount", "op": "gt", "value": 1000},
                        {"attribute": "principal.clearance", "op": "ne", "value": "high"},
                    ],
                    "description": "big reports need clearance",
                },
                {
                    "effect": "allow",
                    "actions": ["workflow:greet:execute"],
                    "conditions": [{"attribute": "channel", "op": "eq", "value": "cli"}],
                },
            ],
        )
    )
    async with app:
        op = Principal(id="op", roles=("operator",), attributes={"clearance": "low"})
        boss = Principal(id="boss", roles=("operator",), attributes={"clearance": "high"})
        guest = Principal(id="guest")
        assert (await app.invoke_as(op, "report", {"amount": 10})).status == "completed"
        with pytest.raises(PermissionDenied, match="a policy denies 'op'"):
            await app.invoke_as(op, "report", {"amount": 5000})
        with pytest.raises(PermissionDenied):  # raw JSON bytes are read for conditions too
            await app.invoke_as(op, "report", b'{"amount": 5000}')
        assert (await app.invoke_as(boss, "report", {"amount": 5000})).status == "completed"
        assert (await app.invoke_as(guest, "greet", {}, channel="cli")).status == "completed"
        with pytest.raises(PermissionDenied):
            await app.invoke_as(guest, "greet", {}, channel="api")


async def test_time_conditions_use_the_configured_time_zone() -> None:
    app = make_app(
        security={
            "auth_enabled": True,
            "providers": ["api_key"],
            "strategy": "abac",
            "timezone": "Asia/Tokyo",
            "policies": [
                {
                    "effect": "allow",
                    "conditions": [
                        {"attribute": "time.hour", "op": "ge", "value": 9},
                        {"attribute": "time.hour", "op": "lt", "value": 17},
                        {"attribute": "time.weekday", "op": "lt", "value": 5},
                    ],
                }
            ],
        }
    )
    async with app:
        who = Principal(id="worker")
        tokyo = dt.timezone(dt.timedelta(hours=9))
        app.security.clock = dt.datetime(2025, 3, 4, 10, 0, tzinfo=tokyo).timestamp  # Tuesday
        assert (await app.invoke_as(who, "greet", {})).status == "completed"
        app.security.clock = dt.datetime(2025, 3, 4, 20, 0, tzinfo=tokyo).timestamp
        with pytest.raises(PermissionDenied):
            await app.invoke_as(who, "greet", {})
        app.security.clock = dt.datetime(2025, 3, 8, 10, 0, tzinfo=tokyo).timestamp  # Saturday
        with pytest.raises(PermissionDenied):
            await app.invoke_as(who, "greet", {})


async def test_decide_explains_without_running_anything() -> None:
    app: Nexus = make_app(security=secured())
    async with app:
        who = Principal(id="g", roles=("greeter",))
        assert app.security.allowed(who, "workflow:greet:execute")
        decision = app.security.decide(who, "workflow:add:execute")
        assert (decision.allowed, decision.reason) == (
            False,
            "'g' lacks the permission 'workflow:add:execute'",
        )
        other = app.security.decide(
            Principal(id="x", roles=("admin",), tenant="a"), "runs:read", tenant="b"
        )
        assert not other.allowed and "another tenant" in other.reason


# -- missing attributes fail closed ------------------------------------------------------------

BIG_REPORTS = {
    "description": "big reports need a lead",
    "effect": "deny",
    "actions": ["workflow:report:execute"],
    "conditions": [
        {"attribute": "input.amount", "op": "gt", "value": 500},
        {"attribute": "principal.level", "op": "ne", "value": "lead"},
    ],
}


async def test_a_deny_rule_on_an_attribute_the_principal_lacks_fails_closed() -> None:
    app = make_app(security=secured(strategy="hybrid", policies=[BIG_REPORTS]))
    async with app:
        nobody = Principal(id="nolevel", roles=("operator",))  # no 'level' attribute at all
        agent = Principal(id="agent", roles=("operator",), attributes={"level": "agent"})
        lead = Principal(id="lead", roles=("operator",), attributes={"level": "lead"})
        for who in (nobody, agent):
            with pytest.raises(PermissionDenied, match="a policy denies"):
                await app.invoke_as(who, "report", {"amount": 900})
            assert (await app.invoke_as(who, "report", {"amount": 20})).status == "completed"
        assert (await app.invoke_as(lead, "report", {"amount": 900})).status == "completed"
        # Listing cannot know the inputs: the workflow stays visible to all three.
        for who in (nobody, agent, lead):
            assert "report" in [wf.name for wf in await app.visible_workflows(who)]
        # Asked directly with raw text, the rule cannot compare "900" with 500: it denies.
        decision = app.security.decide(lead, "workflow:report:execute", inputs={"amount": "9e5"})
        assert decision.allowed  # a lead: the second condition does not hold
        decision = app.security.decide(agent, "workflow:report:execute", inputs={"amount": "9e5"})
        assert not decision.allowed
        nan = app.security.decide(agent, "workflow:report:execute", inputs={"amount": float("nan")})
        assert not nan.allowed


async def test_if_missing_allow_lets_a_rule_say_otherwise() -> None:
    lenient = {**BIG_REPORTS, "if_missing": "allow"}
    welcome = {
        "effect": "allow",
        "actions": ["workflow:greet:execute"],
        "conditions": [{"attribute": "principal.status", "op": "ne", "value": "suspended"}],
    }
    app = make_app(security=secured(strategy="hybrid", policies=[lenient, welcome]))
    async with app:
        nobody = Principal(id="nolevel", roles=("operator",))
        assert (await app.invoke_as(nobody, "report", {"amount": 900})).status == "completed"
        # An allow rule fails closed by default: 'status' missing grants nothing...
        guest = Principal(id="guest")
        with pytest.raises(PermissionDenied):
            await app.invoke_as(guest, "greet", {})
    app = make_app(
        security=secured(strategy="hybrid", policies=[{**welcome, "if_missing": "allow"}])
    )
    async with app:
        # ...unless it says a missing status counts as not suspended.
        assert (await app.invoke_as(guest, "greet", {})).status == "completed"
        suspended = Principal(id="s", attributes={"status": "suspended"})
        with pytest.raises(PermissionDenied):
            await app.invoke_as(suspended, "greet", {})


def test_if_missing_is_checked_in_the_configuration() -> None:
    from nexus_core.config import ConfigError

    with pytest.raises(ConfigError, match="if_missing"):
        make_app(security=secured(strategy="hybrid", policies=[{**BIG_REPORTS, "if_missing": "x"}]))


async def test_any_inputs_asks_whether_some_inputs_could_be_allowed() -> None:
    from nexus_core.security.policy import ANY_INPUTS

    small_only = {
        "effect": "allow",
        "actions": ["workflow:report:execute"],
        "conditions": [{"attribute": "input.amount", "op": "le", "value": 100}],
    }
    app = make_app(security=secured(strategy="hybrid", policies=[small_only, BIG_REPORTS]))
    async with app:
        guest = Principal(id="guest", attributes={"level": "agent"})  # no role at all
        action = "workflow:report:execute"
        # Some inputs could pass the allow rule, and the deny rule needs inputs to apply.
        assert app.security.decide(guest, action, inputs=ANY_INPUTS).allowed
        assert app.security.decide(guest, action, inputs={"amount": 50}).allowed
        assert not app.security.decide(guest, action, inputs={"amount": 5000}).allowed
        # Without inputs the allow rule cannot be met: not listed, as before.
        assert "report" not in [wf.name for wf in await app.visible_workflows(guest)]
        # No inputs at all could let it run 'greet': refused before validation (403, not 422).
        assert not app.security.decide(guest, "workflow:greet:execute", inputs=ANY_INPUTS).allowed
        with pytest.raises(PermissionDenied):
            await app.invoke_as(guest, "greet", {"name": 42})
        assert (await app.invoke_as(guest, "report", {"amount": 50})).status == "completed"
        with pytest.raises(PermissionDenied):
            await app.invoke_as(guest, "report", {"amount": 5000})
