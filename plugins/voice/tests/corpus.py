"""The spoken corpus over examples/hello.py and examples/shop.py: phrase, workflow, inputs."""

from __future__ import annotations

from typing import Any

MUG, PAN, PEN, TENT, LAMP = "MUG-001", "PAN-010", "PEN-100", "TNT-500", "LMP-220"

#: (what is said, the workflow it runs, the inputs it runs with).
CORPUS: list[tuple[str, str, dict[str, Any]]] = [
    ("run greet with name ada", "greet", {"name": "Ada"}),
    ("greet grace", "greet", {"name": "Grace"}),
    ("greet alan excited", "greet", {"name": "Alan", "excited": True}),
    ("say hello to linus", "greet", {"name": "Linus"}),
    ("please greet grace", "greet", {"name": "Grace"}),
    ("greet name alan", "greet", {"name": "Alan"}),
    ("run greet with name linus excited", "greet", {"name": "Linus", "excited": True}),
    ("say hello to ada excited", "greet", {"name": "Ada", "excited": True}),
    ("quote two mugs", "quote", {"items": [{"quantity": 2, "sku": MUG}]}),
    ("quote a cast iron pan", "quote", {"items": [{"quantity": 1, "sku": PAN}]}),
    (
        "quote three fountain pens and a desk lamp",
        "quote",
        {"items": [{"quantity": 3, "sku": PEN}, {"quantity": 1, "sku": LAMP}]},
    ),
    ("quote twelve tents", "quote", {"items": [{"quantity": 12, "sku": TENT}]}),
    ("quote seven desk lamps", "quote", {"items": [{"quantity": 7, "sku": LAMP}]}),
    (
        "run quote with one mug and two cast iron pans",
        "quote",
        {"items": [{"quantity": 1, "sku": MUG}, {"quantity": 2, "sku": PAN}]},
    ),
    ("ship two hundred grams to germany", "shipping", {"weight_grams": 200, "country": "DE"}),
    (
        "ship two hundred and fifty grams to france express",
        "shipping",
        {"weight_grams": 250, "country": "FR", "express": True},
    ),
    ("ship one thousand grams to america", "shipping", {"weight_grams": 1000, "country": "US"}),
    ("ship five thousand grams to holland", "shipping", {"weight_grams": 5000, "country": "NL"}),
    ("shipping nine hundred grams to france", "shipping", {"weight_grams": 900, "country": "FR"}),
    (
        "ship three hundred and twenty grams to germany express",
        "shipping",
        {"weight_grams": 320, "country": "DE", "express": True},
    ),
    ("ship forty grams to the united states", "shipping", {"weight_grams": 40, "country": "US"}),
    ("search for lamp", "search", {"query": "lamp"}),
    ("search for mug tagged kitchen", "search", {"query": "mug", "tags": ["kitchen"]}),
    ("search for pen limit two", "search", {"query": "pen", "limit": 2}),
    (
        "search for lamp tagged office and gift",
        "search",
        {"query": "lamp", "tags": ["office", "gift"]},
    ),
    ("search for tent tagged outdoor", "search", {"query": "tent", "tags": ["outdoor"]}),
    ("search for notebook limit ten", "search", {"query": "notebook", "limit": 10}),
    ("add to cart two mugs", "add_to_cart", {"quantity": 2, "sku": MUG}),
    ("add to cart a tent", "add_to_cart", {"quantity": 1, "sku": TENT}),
    ("add to cart five fountain pens", "add_to_cart", {"quantity": 5, "sku": PEN}),
    ("add to cart desk lamp quantity three", "add_to_cart", {"sku": LAMP, "quantity": 3}),
    ("add to cart cast iron pan", "add_to_cart", {"sku": PAN}),
    ("view cart", "view_cart", {}),
    ("what is in my cart", "view_cart", {}),
    ("run view cart", "view_cart", {}),
    ("greet ada", "greet", {"name": "Ada"}),
    ("quote nineteen mugs", "quote", {"items": [{"quantity": 19, "sku": MUG}]}),
    ("ship sixty grams to germany", "shipping", {"weight_grams": 60, "country": "DE"}),
    ("search for mug limit one", "search", {"query": "mug", "limit": 1}),
    ("add to cart eleven desk lamps", "add_to_cart", {"quantity": 11, "sku": LAMP}),
    ("please view cart", "view_cart", {}),
    ("quote eight fountain pens", "quote", {"items": [{"quantity": 8, "sku": PEN}]}),
]

#: Session commands: (what is said, intent kind).
COMMANDS = [
    ("what is the status of my last run", "status"),
    ("repeat that", "repeat"),
    ("cancel it", "cancel"),
    ("help", "help"),
]

#: Speech outside the grammar: nothing may run.
OUT_OF_GRAMMAR = [
    "what is the weather in paris today",
    "play some music please",
    "tell me a joke about cats",
    "book a table for four tonight",
    "turn off the lights in the kitchen",
]

#: (espeak-ng voice, words per minute): several en-us voices and speeds.
VOICES = [("en-us", 150), ("en-us+f3", 170), ("en-us+m3", 160), ("en-us", 185), ("en-us+f2", 150)]
