"""Access control: RBAC (roles grant permission patterns) and ABAC (attribute rules).

Actions are strings: ``workflow:<name>:execute``, ``runs:read``,
``runs:cancel``, ``sessions:admin``, ``events:read``, ``audit:read``. A
permission or rule action is an ``fnmatch`` pattern (``workflow:*:execute``);
the permission ``admin`` grants every action.

Decisions, once enforcement is on (authentication on):

1. a resource of another tenant is denied;
2. a principal with ``scopes`` is denied any action no scope matches;
3. ``rbac``: allowed iff one of the principal's roles (plus the configured
   ``default_roles``, for non-anonymous principals) grants a matching permission;
   ``abac``: allowed iff an ``allow`` rule matches and no ``deny`` rule does;
   ``hybrid``: allowed iff (RBAC allows or an ``allow`` rule matches) and no
   ``deny`` rule matches.

A rule matches when one of its action patterns matches and every condition
holds. A condition on an attribute the principal or the inputs lack, or whose
value cannot be compared (``"900"`` with ``gt 500``, NaN, a boolean ordered),
fails closed: a ``deny`` rule counts it as holding and an ``allow`` rule as
not holding. A rule with ``if_missing = "allow"`` says otherwise: its ``deny``
does not apply and its ``allow`` counts the condition as holding. What the
request does not supply at all (no inputs yet, when listing the workflows a
caller may run; no channel) is unknown, and a condition on it does not hold
for either effect. ``exists`` tests presence and is never missing. With
``inputs=ANY_INPUTS`` the question is whether *some* inputs could be allowed:
conditions on inputs count as met in allow rules and unmet in deny rules.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from ..config import ConfigError, PolicyCondition, PolicyRule
from .principal import Principal

__all__ = [
    "ANY_INPUTS",
    "AccessPolicy",
    "Decision",
    "RequestContext",
    "condition_holds",
    "resolve_attribute",
    "rule_applies",
]

_KEY = "nexus.services.security"
_MISSING: Any = msgspec.UNSET


class _Unknown:
    """Not supplied by the request at all (no inputs, no channel): neither present nor missing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


_UNKNOWN: Any = _Unknown()


class _AnyInputs:
    """Inputs not read yet, for asking whether a request with *some* inputs could be allowed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY_INPUTS"


#: Pass as ``inputs`` to ask whether some inputs could be allowed: a condition
#: on ``input.*`` then counts as met in an ``allow`` rule and as unmet in a
#: ``deny`` rule. A denial then holds for every possible input, so the host
#: refuses such a caller before it validates (and names) anything.
ANY_INPUTS: Any = _AnyInputs()
_ANY: Any = ANY_INPUTS
_PRINCIPAL_FIELDS = frozenset({"id", "tenant", "roles", "scopes", "provider", "anonymous"})
_WORKFLOW_FIELDS = frozenset({"name", "title", "tags", "read_only", "destructive", "idempotent"})
_TIME_FIELDS = frozenset({"hour", "minute", "weekday", "date"})
_PLAIN_ROOTS = frozenset({"channel", "tenant", "action"})
_INDEX = re.compile(r"^\d+$")


class Decision(msgspec.Struct, frozen=True):
    """An access decision and, when denied, why (safe to show the caller)."""

    allowed: bool
    reason: str = ""


class RequestContext:
    """What a decision may look at; inputs are decoded only if a condition asks for them."""

    __slots__ = ("_inputs", "_parsed", "action", "channel", "now", "principal", "workflow")

    def __init__(
        self,
        principal: Principal,
        action: str,
        *,
        channel: str | None = None,
        workflow: Any = None,
        inputs: Any = _MISSING,
        now: dt.datetime,
    ) -> None:
        self.principal = principal
        self.action = action
        self.channel = channel
        self.workflow = workflow
        self.now = now
        self._inputs = inputs
        self._parsed: Any = None

    @property
    def supplied_inputs(self) -> Any:
        """The inputs as given (``msgspec.UNSET`` when the request has none yet)."""
        return self._inputs

    def inputs(self) -> Any:
        """The inputs as builtins (``_MISSING`` when absent or undecodable)."""
        if self._parsed is None:
            self._parsed = _plain_inputs(self._inputs)
        return self._parsed


def _plain_inputs(inputs: Any) -> Any:
    if inputs is _MISSING or inputs is None:
        return _MISSING
    try:
        if isinstance(inputs, (bytes, bytearray, memoryview, str)):
            raw = inputs.encode() if isinstance(inputs, str) else bytes(inputs)
            return msgspec.json.decode(raw)
        return msgspec.to_builtins(inputs)
    except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
        return _MISSING


def _follow(value: Any, path: Sequence[str]) -> Any:
    for part in path:
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, (list, tuple)) and _INDEX.match(part):
            index = int(part)
            value = value[index] if index < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def resolve_attribute(name: str, ctx: RequestContext) -> Any:
    """The value of attribute ``name`` in ``ctx`` (``msgspec.UNSET`` when missing or unknown)."""
    value = _resolve(name, ctx)
    return _MISSING if value is _UNKNOWN else value


def _resolve(name: str, ctx: RequestContext) -> Any:
    """The value, ``_MISSING`` (the source lacks it) or ``_UNKNOWN`` (no source given)."""
    root, _, rest = name.partition(".")
    principal = ctx.principal
    if root == "principal":
        if rest in _PRINCIPAL_FIELDS:
            value = getattr(principal, rest)
            return list(value) if isinstance(value, tuple) else value
        return _follow(principal.attributes, rest.split("."))
    if root in _PLAIN_ROOTS and not rest:
        if root == "channel":
            return ctx.channel if ctx.channel is not None else _UNKNOWN
        return principal.tenant if root == "tenant" else ctx.action
    if root == "workflow":
        wf = ctx.workflow
        if wf is None:
            return _UNKNOWN
        if isinstance(wf, str):
            return wf if rest in ("", "name") else _UNKNOWN
        if rest in ("", "name"):
            return wf.name
        value = getattr(wf.meta, rest, _MISSING)
        return list(value) if isinstance(value, tuple) else value
    if root == "input":
        supplied = ctx.supplied_inputs
        if supplied is _MISSING or supplied is None:
            return _UNKNOWN
        if supplied is _ANY:
            return _ANY
        return _follow(ctx.inputs(), rest.split("."))
    if root == "time":
        now = ctx.now
        if rest == "date":
            return now.date().isoformat()
        return {"hour": now.hour, "minute": now.minute, "weekday": now.weekday()}.get(
            rest, _MISSING
        )
    return _MISSING


def condition_holds(condition: PolicyCondition, ctx: RequestContext) -> bool:
    """Whether one condition holds in ``ctx``: a missing, unknown or incomparable value does not.

    Rules apply fail-closed semantics on top of this (see the module docstring).
    """
    return _evaluate(condition, ctx) is True


def _evaluate(condition: PolicyCondition, ctx: RequestContext) -> Any:
    """True, False, ``_MISSING`` (missing or incomparable), ``_UNKNOWN`` or ``_ANY``."""
    value = _resolve(condition.attribute, ctx)
    op, want = condition.op, condition.value
    if value is _UNKNOWN or value is _ANY:
        return value
    if op == "exists":
        return (value is not _MISSING) == (True if want is None else bool(want))
    if value is _MISSING or _is_nan(value):
        return _MISSING
    try:
        if op == "eq":
            return bool(value == want)
        if op == "ne":
            return bool(value != want)
        if op in ("in", "not_in"):
            many = isinstance(value, list)
            hit = any(item in want for item in value) if many else value in want
            return hit if op == "in" else not hit
        if op == "contains":
            if not isinstance(value, (str, list, dict)):
                return _MISSING
            return bool(want in value)
        if op == "matches":
            if isinstance(value, list):
                return any(isinstance(i, str) and fnmatch.fnmatchcase(i, want) for i in value)
            if not isinstance(value, str):
                return _MISSING
            return fnmatch.fnmatchcase(value, want)
        if isinstance(value, bool) or isinstance(want, bool) or _is_nan(want):
            return _MISSING  # no ordering of booleans or NaN
        if isinstance(value, str) != isinstance(want, str):
            return _MISSING  # "900" is not ordered against 500
        if op == "lt":
            return bool(value < want)
        if op == "le":
            return bool(value <= want)
        if op == "gt":
            return bool(value > want)
        if op == "ge":
            return bool(value >= want)
    except TypeError:
        return _MISSING
    return False  # pragma: no cover - ops are a closed Literal


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def rule_applies(rule: PolicyRule, ctx: RequestContext) -> bool:
    """Whether every condition of ``rule`` holds, failing closed on missing attributes.

    A condition on a missing or incomparable attribute counts as holding when
    ``rule.effect == rule.if_missing`` (a ``deny`` rule, by default) and as not
    holding otherwise; on an unknown one (not supplied) it never holds.
    """
    for condition in rule.conditions:
        outcome = _evaluate(condition, ctx)
        if outcome is True:
            continue
        if outcome is _MISSING and rule.effect == rule.if_missing:
            continue
        if outcome is _ANY and rule.effect == "allow":
            continue  # some inputs could meet it
        return False
    return True


def _matches(action: str, patterns: Iterable[str]) -> bool:
    return any(p == "admin" or fnmatch.fnmatchcase(action, p) for p in patterns)


class AccessPolicy:
    """RBAC + ABAC decisions from ``nexus.services.security`` (see the module docstring)."""

    def __init__(
        self,
        *,
        strategy: str,
        roles: Mapping[str, Sequence[str]],
        default_roles: Sequence[str] = (),
        policies: Sequence[PolicyRule] = (),
        timezone: str = "UTC",
        enforce: bool = True,
    ) -> None:
        self.strategy = strategy
        self.roles = {name: tuple(perms) for name, perms in roles.items()}
        self.default_roles = tuple(default_roles)
        self.policies = tuple(policies)
        self.enforce = enforce
        try:
            self.timezone: dt.tzinfo = zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"{_KEY}.timezone: unknown time zone {timezone!r}", key=f"{_KEY}.timezone"
            ) from exc

    def check(self, *, auth_required: bool) -> None:
        """Raise :class:`ConfigError` for settings that cannot work or would do nothing."""
        if self.strategy == "rbac" and self.policies:
            raise ConfigError(
                f"{_KEY}.policies are set but strategy is 'rbac', which ignores them; "
                "set strategy to 'abac' or 'hybrid' (or remove the policies)",
                key=f"{_KEY}.policies",
            )
        if self.strategy == "abac" and self.roles:
            raise ConfigError(
                f"{_KEY}.roles are set but strategy is 'abac', which ignores them; "
                "set strategy to 'rbac' or 'hybrid' (or remove the roles)",
                key=f"{_KEY}.roles",
            )
        if self.strategy != "abac":
            for role in self.default_roles:
                if role not in self.roles:
                    raise ConfigError(
                        f"{_KEY}.default_roles: role {role!r} is not defined in {_KEY}.roles",
                        key=f"{_KEY}.default_roles",
                    )
        for index, rule in enumerate(self.policies):
            for cindex, condition in enumerate(rule.conditions):
                _check_condition(condition, f"{_KEY}.policies[{index}].conditions[{cindex}]")
        if not auth_required:
            return
        allows = any(rule.effect == "allow" for rule in self.policies)
        if self.strategy == "rbac" and not self.roles:
            raise ConfigError(
                f"authentication is on and strategy is 'rbac' but {_KEY}.roles is empty, so "
                "every request would be denied; define roles, e.g. "
                'roles = { operator = ["workflow:*:execute", "runs:read"] }',
                key=f"{_KEY}.roles",
            )
        if self.strategy == "abac" and not allows:
            raise ConfigError(
                f"authentication is on and strategy is 'abac' but no {_KEY}.policies rule "
                "allows anything, so every request would be denied; add an 'allow' rule",
                key=f"{_KEY}.policies",
            )
        if self.strategy == "hybrid" and not self.roles and not allows:
            raise ConfigError(
                f"authentication is on and strategy is 'hybrid' but neither {_KEY}.roles nor "
                "an 'allow' policy is defined, so every request would be denied",
                key=f"{_KEY}.roles",
            )

    def permissions(self, principal: Principal) -> tuple[str, ...]:
        """Every permission pattern the principal's roles grant."""
        roles = principal.roles if principal.anonymous else (*principal.roles, *self.default_roles)
        out: list[str] = []
        for role in dict.fromkeys(roles):
            out.extend(self.roles.get(role, ()))
        return tuple(out)

    def decide(
        self,
        principal: Principal,
        action: str,
        *,
        clock: Callable[[], float],
        channel: str | None = None,
        workflow: Any = None,
        inputs: Any = _MISSING,
        tenant: str | None = None,
    ) -> Decision:
        """Whether ``principal`` may do ``action`` (``tenant``: the resource's tenant, if any)."""
        if not self.enforce:
            return Decision(True, "authentication is off")
        who = f"{principal.id!r}"
        if tenant is not None and tenant != principal.tenant:
            return Decision(False, f"{who} may not access another tenant's resources")
        if principal.scopes and not _matches(action, principal.scopes):
            return Decision(False, f"{action!r} is outside the scopes of {who}'s credential")
        rbac = self.strategy != "abac" and _matches(action, self.permissions(principal))
        allow = deny = False
        if self.strategy != "rbac" and self.policies:
            now = dt.datetime.fromtimestamp(clock(), self.timezone)
            ctx = RequestContext(
                principal, action, channel=channel, workflow=workflow, inputs=inputs, now=now
            )
            for rule in self.policies:
                if not _matches_rule_action(action, rule.actions):
                    continue
                if rule.effect == "allow" and allow:
                    continue
                if rule_applies(rule, ctx):
                    if rule.effect == "deny":
                        deny = True
                        break
                    allow = True
        if deny:
            return Decision(False, f"a policy denies {who} {action!r}")
        if self.strategy == "rbac":
            ok = rbac
        elif self.strategy == "abac":
            ok = allow
        else:
            ok = rbac or allow
        if ok:
            return Decision(True)
        return Decision(False, f"{who} lacks the permission {action!r}")


def _matches_rule_action(action: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(action, p) for p in patterns)


def _check_condition(condition: PolicyCondition, key: str) -> None:
    root, _, rest = condition.attribute.partition(".")
    ok = (
        (root == "principal" and bool(rest))
        or (root in _PLAIN_ROOTS and not rest)
        or (root == "workflow" and (not rest or rest in _WORKFLOW_FIELDS))
        or (root == "input" and bool(rest))
        or (root == "time" and rest in _TIME_FIELDS)
    )
    if not ok:
        raise ConfigError(
            f"{key}.attribute: unknown attribute {condition.attribute!r}; use principal.<name>, "
            "channel, tenant, action, workflow[.tags|...], input.<field> or "
            "time.hour|minute|weekday|date",
            key=f"{key}.attribute",
        )
    op, value = condition.op, condition.value
    if op in ("in", "not_in") and not isinstance(value, list):
        raise ConfigError(f"{key}.value: {op!r} needs a list", key=f"{key}.value")
    if op == "matches" and not isinstance(value, str):
        raise ConfigError(f"{key}.value: 'matches' needs a pattern string", key=f"{key}.value")
    if op in ("lt", "le", "gt", "ge") and (value is None or isinstance(value, (bool, list, dict))):
        raise ConfigError(f"{key}.value: {op!r} needs a number or a string", key=f"{key}.value")
    if op == "exists" and value is not None and not isinstance(value, bool):
        raise ConfigError(f"{key}.value: 'exists' takes true or false", key=f"{key}.value")
