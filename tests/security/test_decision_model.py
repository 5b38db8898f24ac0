"""Validate, then decide: the decision is made on what the workflow receives (issue #12).

For random policies (rules on numbers, text and booleans, on attributes the
principal or the inputs may lack, with either ``if_missing``) and random
inputs (including text that looks like a number or a boolean, ``"Infinity"``,
``"NaN"``, ``"9e5"``, NaN and infinite floats, ``None`` and unknown fields),
``app.invoke`` must agree with a small reference model that first validates
strictly and then evaluates the rules on the validated values:

* a caller whom no inputs could let through is refused (``PermissionDenied``)
  before its inputs are read;
* inputs the model refuses raise ``ValidationError`` and never run;
* otherwise the run happens iff the model allows it, and the workflow receives
  exactly the values the model validated (and decided on).

The model is written separately from ``nexus_core.security.policy`` and
``nexus_core.workflows.schema``, as plainly as possible.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from nexus_core import Nexus, PermissionDenied, ValidationError
from nexus_core.security import Principal

pytestmark = pytest.mark.anyio

# -- the workflow: what its fields accept, strictly ------------------------------------------------

#: field -> (accepts, default or REQUIRED)
REQUIRED = object()


def _number(value: Any) -> tuple[bool, Any]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, None
    if isinstance(value, float) and not math.isfinite(value):
        return False, None
    return True, float(value)


def _integer(value: Any) -> tuple[bool, Any]:
    return (isinstance(value, int) and not isinstance(value, bool)), value


def _boolean(value: Any) -> tuple[bool, Any]:
    return isinstance(value, bool), value


def _text(value: Any) -> tuple[bool, Any]:
    return isinstance(value, str), value


FIELDS: dict[str, tuple[Any, Any]] = {
    "amount": (_number, REQUIRED),
    "count": (_integer, 1),
    "express": (_boolean, False),
    "region": (_text, "eu"),
}


def validate(inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The values the workflow receives, or None when the inputs are refused."""
    if any(name not in FIELDS for name in inputs):
        return None
    values = {}
    for name, (accepts, default) in FIELDS.items():
        if name not in inputs:
            if default is REQUIRED:
                return None
            values[name] = default
            continue
        ok, value = accepts(inputs[name])
        if not ok:
            return None
        values[name] = value
    return values


# -- the reference policy model ------------------------------------------------------------------

MISSING = object()
ANY = object()  # inputs not read yet: could some inputs meet it?


def attribute(name: str, principal: Principal, values: dict[str, Any] | None) -> Any:
    root, _, rest = name.partition(".")
    if root == "principal":
        return principal.attributes.get(rest, MISSING)
    return ANY if values is None else values.get(rest, MISSING)


def comparable(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (
        isinstance(a, str) and isinstance(b, str)
    )


def outcome(condition: dict[str, Any], principal: Principal, values: dict[str, Any] | None) -> Any:
    """True, False, MISSING (lacking, or not comparable) or ANY (inputs not read yet)."""
    value = attribute(condition["attribute"], principal, values)
    op, want = condition["op"], condition["value"]
    if value is ANY:
        return ANY
    if op == "exists":
        return (value is not MISSING) == want
    if value is MISSING:
        return MISSING
    if op == "eq":
        return value == want
    if op == "ne":
        return value != want
    if op == "in":
        return value in want
    if not comparable(value, want):
        return MISSING
    return {"lt": value < want, "le": value <= want, "gt": value > want, "ge": value >= want}[op]


def applies(rule: dict[str, Any], principal: Principal, values: dict[str, Any] | None) -> bool:
    for condition in rule["conditions"]:
        result = outcome(condition, principal, values)
        if result is ANY:  # the most permissive reading: met in allow rules, unmet in deny rules
            if rule["effect"] != "allow":
                return False
        elif result is MISSING:
            if rule["effect"] != rule.get("if_missing", "deny"):
                return False
        elif not result:
            return False
    return True


def decide(config: dict[str, Any], principal: Principal, values: dict[str, Any] | None) -> bool:
    """Allowed on ``values``; with None, whether *some* inputs could be allowed."""
    rbac = config["strategy"] == "hybrid" and "payer" in principal.roles
    matching = [rule for rule in config["policies"] if applies(rule, principal, values)]
    allow = any(rule["effect"] == "allow" for rule in matching)
    deny = any(rule["effect"] == "deny" for rule in matching)
    return (rbac or allow) and not deny


# -- random policies, principals and inputs ------------------------------------------------------

LOOKS_LIKE = ["900", "9e5", "Infinity", "-Infinity", "NaN", "1e3", "0x10", " 7", "true", "false"]
SCALARS = (
    st.integers(-1000, 1000)
    | st.floats(allow_nan=True, allow_infinity=True, width=64)
    | st.sampled_from([0.0, -0.0, 500, 500.0, 500.5, 900, 1e300, float("inf"), float("nan")])
    | st.booleans()
    | st.sampled_from(LOOKS_LIKE)
    | st.sampled_from(["eu", "us", "ap", "lead", ""])
    | st.none()
)
CONDITIONS: list[dict[str, Any]] = [
    {"attribute": "input.amount", "op": "gt", "value": 500},
    {"attribute": "input.amount", "op": "le", "value": 100.5},
    {"attribute": "input.amount", "op": "ge", "value": "500"},  # text against a number
    {"attribute": "input.amount", "op": "eq", "value": 900},
    {"attribute": "input.count", "op": "lt", "value": 3},
    {"attribute": "input.count", "op": "in", "value": [1, 2]},
    {"attribute": "input.express", "op": "eq", "value": True},
    {"attribute": "input.express", "op": "ne", "value": False},
    {"attribute": "input.express", "op": "gt", "value": 0},  # booleans are not ordered
    {"attribute": "input.region", "op": "in", "value": ["eu", "us"]},
    {"attribute": "input.region", "op": "lt", "value": "m"},
    {"attribute": "input.coupon", "op": "eq", "value": "FREE"},  # never in the inputs
    {"attribute": "input.coupon", "op": "exists", "value": False},
    {"attribute": "principal.level", "op": "ne", "value": "lead"},
    {"attribute": "principal.level", "op": "eq", "value": "lead"},
    {"attribute": "principal.level", "op": "exists", "value": True},
    {"attribute": "principal.limit", "op": "ge", "value": 1000},
    {"attribute": "principal.limit", "op": "lt", "value": 100},
    {"attribute": "principal.vip", "op": "eq", "value": True},
]
rules = st.fixed_dictionaries(
    {
        "effect": st.sampled_from(["allow", "deny"]),
        "actions": st.just(["workflow:pay:execute"]),
        "conditions": st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=3),
    },
    optional={"if_missing": st.sampled_from(["deny", "allow"])},
)


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    strategy = draw(st.sampled_from(["abac", "hybrid"]))
    policies = draw(st.lists(rules, min_size=1, max_size=4))
    assume(strategy == "hybrid" or any(rule["effect"] == "allow" for rule in policies))
    return {"strategy": strategy, "policies": policies}


@st.composite
def principals(draw: st.DrawFn) -> Principal:
    attributes: dict[str, Any] = {}
    if draw(st.booleans()):
        attributes["level"] = draw(st.sampled_from(["lead", "agent", "900", 5]))
    if draw(st.booleans()):
        attributes["limit"] = draw(st.sampled_from([50, 5000, "5000", True, 1e3]))
    if draw(st.booleans()):
        attributes["vip"] = draw(st.sampled_from([True, False, "true", 1]))
    roles = ("payer",) if draw(st.booleans()) else ()
    return Principal(id=draw(st.sampled_from(["ann", "bob"])), roles=roles, attributes=attributes)


@st.composite
def inputs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from([*FIELDS, "coupon"]), unique=True, max_size=5))
    values = {name: draw(SCALARS) for name in names}
    # Mostly valid, so allow/deny is exercised as much as refusal.
    if draw(st.integers(0, 2)) > 0:
        values.pop("coupon", None)
        values["amount"] = draw(st.integers(0, 2000) | st.floats(0, 2000))
        for name, (accepts, _) in FIELDS.items():
            if name in values and not accepts(values[name])[0]:
                del values[name]
    return values


def make_app(config: dict[str, Any], received: list[dict[str, Any]]) -> Nexus:
    security = {
        "auth_enabled": True,
        "providers": ["api_key"],
        **config,
        "roles": {"payer": ["workflow:*:execute"]} if config["strategy"] == "hybrid" else {},
    }
    app = Nexus(
        "model",
        storage="memory://",
        autoload=False,
        env={},
        config={"services": {"security": security, "runs": {"shutdown_grace": 0}}},
    )

    @app.workflow(blocking=False)
    def pay(amount: float, count: int = 1, express: bool = False, region: str = "eu") -> str:
        """Pay an amount."""
        received.append({"amount": amount, "count": count, "express": express, "region": region})
        return "paid"

    return app


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configurations(),
    batch=st.lists(st.tuples(principals(), inputs()), min_size=1, max_size=8),
)
async def test_the_decision_on_what_the_workflow_receives_is_the_models(
    config: dict[str, Any], batch: list[tuple[Principal, dict[str, Any]]]
) -> None:
    received: list[dict[str, Any]] = []
    app = make_app(config, received)
    async with app:
        for principal, raw in batch:
            values = validate(raw)
            before = len(received)
            if not decide(config, principal, None):
                # No inputs could let this caller through: refused before validation,
                # so it learns nothing about the inputs, valid or not.
                event("refused: no inputs could pass")
                with pytest.raises(PermissionDenied):
                    await app.invoke_as(principal, "pay", raw, channel="api")
                assert len(received) == before, "a denied run ran"
                continue
            if values is None:
                event("refused: invalid")
                with pytest.raises(ValidationError) as err:
                    await app.invoke_as(principal, "pay", raw, channel="api")
                assert err.value.errors and all(e.path for e in err.value.errors), err.value
                assert len(received) == before, "refused inputs ran"
                continue
            allowed = decide(config, principal, values)
            event(f"valid: {'allowed' if allowed else 'denied'}")
            if not allowed:
                with pytest.raises(PermissionDenied):
                    await app.invoke_as(principal, "pay", raw, channel="api")
                assert len(received) == before, "a denied run ran"
                continue
            result = await app.invoke_as(principal, "pay", raw, channel="api")
            assert result.status == "completed", result
            # Exactly the values the model validated and decided on.
            assert received[before:] == [values]
            got = received[-1]
            assert all(type(got[k]) is type(values[k]) for k in values), (got, values)
