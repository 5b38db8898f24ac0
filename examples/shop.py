"""A small shop: every kind of workflow Nexus has, served the same way on every channel.

- ``quote``, ``shipping`` and ``search``: typed functions whose inputs carry
  constraints (patterns, ranges, lengths, enums), so a bad input is refused
  with the field and the reason before anything runs;
- ``order``: a DAG of ten nodes. The cart fans out into two branches that run
  concurrently (an HTTP request to a price catalog, and the shipping cost); a
  switch then decides whether shipping is free, and a merge joins the branches;
- ``add_to_cart`` and ``view_cart``: state kept in a session, which any channel
  can continue;
- ``assistant``: a prompt template (MCP clients list and render it).

::

    python examples/shop.py                       # in process: a demo catalog and one order
    python examples/shop.py catalog --port 8100   # just the demo price catalog, until Ctrl-C
    nexus serve examples/shop.py                  # REST, WebSocket, SSE, and MCP at /mcp
    nexus mcp examples/shop.py                    # MCP over stdio, for a desktop agent

``order`` asks a price catalog over HTTP; give it the URL of the demo catalog
(``http://127.0.0.1:8100/prices`` above), which this file serves too.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec

from nexus_core import Nexus, Session, WorkflowBuilder

app = Nexus("shop")

# -- the vocabulary: constrained types, shared by every workflow ----------------------------

# Lengths as well as patterns: Python's "$" also matches before a final newline.
Sku = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Z]{3}-[0-9]{3}$",
        min_length=7,
        max_length=7,
        description="A stock keeping unit: three capitals, a dash, three digits (MUG-001).",
        examples=["MUG-001"],
    ),
]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=99, description="How many, 1 to 99.")]
Country = Literal["DE", "FR", "NL", "US"]
Coupon = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Z0-9]{4,12}$", max_length=12, description="A coupon code.")
]
Tag = Literal["kitchen", "office", "outdoor", "gift"]
Cents = int

#: Coupons and the percentage they take off.
COUPONS = {"WELCOME10": 10, "FRIENDS25": 25}
#: Orders of at least this many cents ship free.
FREE_SHIPPING_FROM: Cents = 5000


class LineItem(msgspec.Struct, forbid_unknown_fields=True):
    """One line of an order: a SKU and how many."""

    sku: Sku
    quantity: Quantity = 1


#: One to ten lines.
Items = Annotated[list[LineItem], msgspec.Meta(min_length=1, max_length=10)]
CatalogUrl = Annotated[
    str, msgspec.Meta(pattern=r"^https?://", description="The price catalog's URL.")
]


class Product(msgspec.Struct):
    """A product of the catalog."""

    sku: str
    name: str
    tags: list[str]
    grams: int


PRODUCTS = [
    Product("MUG-001", "Enamel mug", ["kitchen", "outdoor", "gift"], 350),
    Product("PAN-010", "Cast iron pan", ["kitchen"], 2300),
    Product("PEN-100", "Fountain pen", ["office", "gift"], 40),
    Product("PAD-120", "Paper notebook", ["office"], 300),
    Product("TNT-500", "Two-person tent", ["outdoor"], 2900),
    Product("LMP-220", "Desk lamp", ["office", "gift"], 1200),
]
_BY_SKU = {product.sku: product for product in PRODUCTS}


def list_price(sku: str) -> Cents | None:
    """What the catalog asks for ``sku``, in cents; None for SKUs no longer sold (``ZZZ-...``).

    Every well-formed SKU has a price, so any input the schema accepts can be priced.
    """
    if sku.startswith("ZZZ"):
        return None
    letters, _, digits = sku.partition("-")
    return 100 + (sum(map(ord, letters)) * (int(digits) + 7)) % 4900


def grams_of(sku: str) -> int:
    """The shipping weight of one ``sku`` (known products, else 500 g)."""
    product = _BY_SKU.get(sku)
    return product.grams if product is not None else 500


# -- typed functions with constraints -----------------------------------------------------


class QuoteLine(msgspec.Struct):
    """A priced line."""

    sku: str
    quantity: int
    unit_cents: Cents
    cents: Cents


class Quote(msgspec.Struct):
    """A priced order, before shipping."""

    lines: list[QuoteLine]
    subtotal_cents: Cents
    discount_cents: Cents
    total_cents: Cents


@app.workflow(read_only=True, idempotent=True, title="Price an order")
def quote(
    items: Items,
    coupon: Coupon | None = None,
) -> Quote:
    """Price up to ten lines at list price, with an optional coupon (an unknown coupon fails)."""
    lines = []
    for item in items:
        unit = list_price(item.sku)
        if unit is None:
            raise LookupError(f"{item.sku} is not sold any more")
        lines.append(QuoteLine(item.sku, item.quantity, unit, unit * item.quantity))
    subtotal = sum(line.cents for line in lines)
    if coupon is not None and coupon not in COUPONS:
        raise ValueError(f"unknown coupon {coupon!r}")
    discount = subtotal * COUPONS.get(coupon or "", 0) // 100
    return Quote(lines, subtotal, discount, subtotal - discount)


class Shipping(msgspec.Struct):
    """How a parcel travels and what it costs."""

    carrier: str
    cents: Cents
    days: int


_ZONES: dict[str, tuple[str, Cents, int]] = {
    "DE": ("DHL", 490, 2),
    "FR": ("Colissimo", 890, 4),
    "NL": ("PostNL", 790, 3),
    "US": ("UPS", 2490, 7),
}


@app.workflow(read_only=True, idempotent=True)
def shipping(
    weight_grams: Annotated[int, msgspec.Meta(ge=1, le=30_000)],
    country: Country,
    express: bool = False,
) -> Shipping:
    """The cost of shipping a parcel of up to 30 kg to one of the countries we serve."""
    carrier, base, days = _ZONES[country]
    cents = base + (weight_grams // 1000) * 100
    if express:
        cents, days = cents * 2, max(1, days // 2)
    return Shipping(carrier, cents, days)


@app.workflow(read_only=True, idempotent=True)
def search(
    query: Annotated[str, msgspec.Meta(min_length=2, max_length=40)],
    limit: Annotated[int, msgspec.Meta(ge=1, le=20)] = 5,
    tags: Annotated[list[Tag], msgspec.Meta(max_length=3)] = [],  # noqa: B006 - msgspec copies it
) -> list[Product]:
    """Products whose name contains the query (any case), having every tag given."""
    needle = query.casefold()
    found = [
        product
        for product in PRODUCTS
        if needle in product.name.casefold() and all(tag in product.tags for tag in tags)
    ]
    return found[:limit]


# -- a DAG: fan-out, an HTTP step, a switch and a merge -----------------------------------


class CartLine(msgspec.Struct):
    """A line of a cart (duplicates merged)."""

    sku: str
    quantity: int


class Cart(msgspec.Struct):
    """An order's lines, its weight, and where and how to ask the catalog for their prices."""

    lines: list[CartLine]
    grams: int
    url: str
    query: dict[str, str]


class Summary(msgspec.Struct):
    """An order priced by the catalog, with its shipping."""

    lines: list[QuoteLine]
    subtotal_cents: Cents
    shipping: Shipping
    shipping_cents: Cents = 0
    free_shipping: bool = False


class Receipt(msgspec.Struct):
    """What the customer pays, and how it arrives."""

    lines: list[QuoteLine]
    subtotal_cents: Cents
    shipping_cents: Cents
    total_cents: Cents
    carrier: str
    days: int
    free_shipping: bool


def make_cart(items: Items, catalog_url: CatalogUrl) -> Cart:
    """Merge lines of the same SKU; weigh the cart; ask the catalog for these SKUs."""
    quantities: dict[str, int] = {}
    for item in items:
        quantities[item.sku] = quantities.get(item.sku, 0) + item.quantity
    lines = [CartLine(sku, quantity) for sku, quantity in sorted(quantities.items())]
    grams = sum(grams_of(line.sku) * line.quantity for line in lines)
    return Cart(lines, grams, catalog_url, {"skus": ",".join(line.sku for line in lines)})


def ship_cart(cart: Cart, country: Country) -> Shipping:
    """Ship the cart's weight (at least 1 g, at most 30 kg a parcel) to ``country``."""
    return shipping(min(max(cart.grams, 1), 30_000), country)


def price_cart(cart: Cart, catalog: dict[str, Any]) -> list[QuoteLine]:
    """Price each line with the catalog's answer; a SKU it does not sell fails the order."""
    prices = catalog.get("prices") or {}
    lines = []
    for line in cart.lines:
        unit = prices.get(line.sku)
        if unit is None:
            raise LookupError(f"the catalog does not sell {line.sku}")
        lines.append(QuoteLine(line.sku, line.quantity, unit, unit * line.quantity))
    return lines


def summarize(lines: list[QuoteLine], shipping: Shipping) -> Summary:
    """Join the two branches: the priced lines and the shipping."""
    return Summary(lines, sum(line.cents for line in lines), shipping)


def free_shipping(summary: Summary) -> Summary:
    """Big orders ship free."""
    return msgspec.structs.replace(summary, shipping_cents=0, free_shipping=True)


def paid_shipping(summary: Summary) -> Summary:
    """Other orders pay the carrier's price."""
    return msgspec.structs.replace(summary, shipping_cents=summary.shipping.cents)


def receipt(summary: Summary) -> Receipt:
    """The total to pay."""
    return Receipt(
        lines=summary.lines,
        subtotal_cents=summary.subtotal_cents,
        shipping_cents=summary.shipping_cents,
        total_cents=summary.subtotal_cents + summary.shipping_cents,
        carrier=summary.shipping.carrier,
        days=summary.shipping.days,
        free_shipping=summary.free_shipping,
    )


def _order_workflow() -> WorkflowBuilder:
    wb = WorkflowBuilder(
        "order",
        description=(
            "Place an order: prices come from the catalog at catalog_url (HTTP), shipping "
            f"is computed meanwhile, and orders from {FREE_SHIPPING_FROM / 100:.2f} ship free."
        ),
    )
    wb.add_node("PythonCodeNode", "cart", {"function": make_cart})
    # The fan-out: both branches start when the cart is ready and run concurrently.
    wb.add_node("HTTPRequestNode", "prices", {"method": "GET", "timeout": 10.0})
    wb.add_node("PythonCodeNode", "ship", {"function": ship_cart})
    wb.add_node("PythonCodeNode", "price", {"function": price_cart})
    wb.add_node("PythonCodeNode", "total", {"function": summarize})
    wb.add_node(
        "SwitchNode",
        "route",
        {"field": "subtotal_cents", "operator": ">=", "value": FREE_SHIPPING_FROM},
    )
    wb.add_node("PythonCodeNode", "free", {"function": free_shipping})
    wb.add_node("PythonCodeNode", "paid", {"function": paid_shipping})
    wb.add_node("MergeNode", "join", {"strategy": "first"})
    wb.add_node("PythonCodeNode", "receipt", {"function": receipt})

    wb.add_workflow_inputs("cart", {"items": "items", "catalog_url": "catalog_url"})
    wb.add_workflow_inputs("ship", {"country": "country"})
    wb.add_connection("cart", "result", "ship", "cart")
    wb.add_connection("cart", "result.url", "prices", "url")
    wb.add_connection("cart", "result.query", "prices", "params")
    wb.add_connection("cart", "result", "price", "cart")
    wb.add_connection("prices", "json", "price", "catalog")
    wb.add_connection("price", "result", "total", "lines")
    wb.add_connection("ship", "result", "total", "shipping")
    wb.add_connection("total", "result", "route", "input_data")
    wb.add_connection("route", "true_output", "free", "summary")
    wb.add_connection("route", "false_output", "paid", "summary")
    wb.add_connection("free", "result", "join", "data1")
    wb.add_connection("paid", "result", "join", "data2")
    wb.add_connection("join", "merged", "receipt", "summary")
    wb.set_output("receipt")
    return wb


app.register(_order_workflow())


# -- session state ------------------------------------------------------------------------


class CartView(msgspec.Struct):
    """What is in the session's cart."""

    lines: list[CartLine]
    count: int


def _view(session: Session) -> CartView:
    cart: dict[str, int] = session.state.get("cart", {})
    lines = [CartLine(sku, quantity) for sku, quantity in sorted(cart.items())]
    return CartView(lines, sum(cart.values()))


@app.workflow
def add_to_cart(session: Session, sku: Sku, quantity: Quantity = 1) -> CartView:
    """Put an item in this session's cart (the session is created when none is given)."""
    cart = session.state.setdefault("cart", {})
    cart[sku] = min(cart.get(sku, 0) + quantity, 99)
    return _view(session)


@app.workflow(read_only=True)
def view_cart(session: Session) -> CartView:
    """What this session's cart holds."""
    return _view(session)


# -- a prompt -----------------------------------------------------------------------------


@app.prompt(title="Shopping assistant")
def assistant(budget_cents: int, country: Country = "DE") -> list[dict[str, str]]:
    """Ask an agent to fill a cart within a budget, using this shop's tools."""
    return [
        {
            "role": "user",
            "content": (
                f"Help me buy useful things for at most {budget_cents / 100:.2f} EUR, shipped "
                f"to {country}. Use 'search' to find products, 'quote' and 'shipping' to "
                "price them, and 'add_to_cart' to keep what I choose."
            ),
        },
        {"role": "assistant", "content": "Tell me what you are looking for."},
    ]


# -- the demo price catalog (what order's HTTP step asks) ----------------------------------


class CatalogHandler(BaseHTTPRequestHandler):
    """``GET /prices?skus=A,B``: ``{"currency": "EUR", "prices": {sku: cents or null}}``."""

    def do_GET(self) -> None:
        """Answer the price query; anything else is a 404."""
        url = urlsplit(self.path)
        if url.path.rstrip("/") != "/prices":
            self.send_error(404, "the catalog serves /prices?skus=A,B")
            return
        skus = [s for s in ",".join(parse_qs(url.query).get("skus", [])).split(",") if s]
        body = json.dumps({"currency": "EUR", "prices": {s: list_price(s) for s in skus}})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a demo server."""


def catalog_server(port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the demo catalog in a background thread; ``server.server_port`` is its port."""
    server = ThreadingHTTPServer((host, port), CatalogHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="catalog", daemon=True).start()
    return server


async def main() -> None:
    """Serve the demo catalog, then place one order in process."""
    server = catalog_server()
    url = f"http://127.0.0.1:{server.server_port}/prices"
    try:
        async with app:
            result = await app.invoke(
                "order",
                {
                    "catalog_url": url,
                    "items": [{"sku": "PAN-010", "quantity": 2}, {"sku": "MUG-001"}],
                    "country": "DE",
                },
            )
            print(result.status, json.dumps(result.output, indent=2))
    finally:
        server.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] == ["catalog"]:
        port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 8100
        catalog = catalog_server(port)
        print(f"catalog: http://127.0.0.1:{catalog.server_port}/prices", flush=True)
        threading.Event().wait()
    else:
        anyio.run(main)
