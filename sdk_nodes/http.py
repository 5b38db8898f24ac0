"""``HTTPRequestNode``: one HTTP request with httpx, on the event loop."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.lowlevel
import httpx
import msgspec

from nexus_core.workflows.node import Node

from ._common import ConfigError, NamedConfigErrors

__all__ = [
    "HTTPRequestConfig",
    "HTTPRequestInputs",
    "HTTPRequestNode",
    "HTTPRequestOutputs",
    "HTTPStatusError",
]

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

_BODY_IN_ERROR = 200


class HTTPStatusError(RuntimeError):
    """A response had a non-2xx status and ``raise_for_status`` is on."""

    def __init__(self, method: str, url: str, status: int, reason: str, body: str) -> None:
        snippet = body[:_BODY_IN_ERROR] + ("..." if len(body) > _BODY_IN_ERROR else "")
        message = f"{method} {url} returned HTTP {status} {reason}".rstrip()
        super().__init__(f"{message}: {snippet}" if snippet else message)
        self.method = method
        self.url = url
        self.status = status


class HTTPRequestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`HTTPRequestNode`."""

    method: Method = "GET"
    url: str | None = None
    headers: dict[str, str] = {}
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    raise_for_status: bool = True


class HTTPRequestInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`HTTPRequestNode`; ``url`` overrides the config's, headers add to it."""

    url: str | None = None
    params: dict[str, str] = {}
    json: Any = None
    headers: dict[str, str] = {}


class HTTPRequestOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`HTTPRequestNode`: ``json`` is the parsed body when it is JSON."""

    status: int
    headers: dict[str, str]
    body: str
    json: Any = None


def _check_url(url: str, key: str) -> None:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigError(key, f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(key, f"expected an absolute http(s) URL, got {url!r}")


class HTTPRequestNode(NamedConfigErrors, Node):
    """Send one HTTP request and return status, headers, body and parsed JSON.

    The URL comes from the ``url`` input or else the config. ``params`` become
    the query string, ``json`` (when not None) the JSON body, and input
    ``headers`` are added to the configured ones. With ``raise_for_status``
    (the default) a non-2xx response fails the node with an error naming the
    status and the URL. One ``httpx.AsyncClient`` per node instance is opened
    lazily in the running event loop and reused; :meth:`aclose` closes it.
    """

    Config = HTTPRequestConfig
    Inputs = HTTPRequestInputs
    Outputs = HTTPRequestOutputs

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if self.config.url is not None:
            _check_url(self.config.url, "url")
        self._client: httpx.AsyncClient | None = None
        self._loop: object = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = anyio.lowlevel.current_token().native_token
        if self._client is None or self._loop is not loop:
            # A client belongs to the event loop that opened it; a workflow run
            # from another loop (another thread, a new test) gets its own.
            self._client = httpx.AsyncClient(timeout=self.config.timeout)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled client (the next run opens a new one)."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()

    async def run(self, inputs: HTTPRequestInputs) -> HTTPRequestOutputs:
        """Send the request; fail on a non-2xx status when ``raise_for_status`` is set."""
        config = self.config
        url = inputs.url if inputs.url is not None else config.url
        if url is None:
            raise ValueError("no URL: set the config 'url' or connect the 'url' input")
        headers = {**config.headers, **inputs.headers}
        content: bytes | None = None
        if inputs.json is not None:
            content = msgspec.json.encode(inputs.json)
            if not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = "application/json"
        response = await self._get_client().request(
            config.method,
            url,
            params=inputs.params or None,
            headers=headers,
            content=content,
        )
        body = response.text
        if config.raise_for_status and not response.is_success:
            raise HTTPStatusError(
                config.method, str(response.url), response.status_code, response.reason_phrase, body
            )
        return HTTPRequestOutputs(
            status=response.status_code,
            headers=dict(response.headers.items()),
            body=body,
            json=_parse_json(response, body),
        )


def _parse_json(response: httpx.Response, body: str) -> Any:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body or not (content_type == "application/json" or content_type.endswith("+json")):
        return None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
