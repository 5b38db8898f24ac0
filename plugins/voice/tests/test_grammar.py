"""The grammar from the workflows, parsed back: no audio needed."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voice_support import VOICE_SECTION, load_examples

from nexus_plugin_voice.config import VoiceConfig
from nexus_plugin_voice.grammar import build_grammar
from nexus_plugin_voice.numbers import number_to_words, words_to_number


@pytest.fixture(scope="module")
def grammar():
    return build_grammar(load_examples(), msgspec.convert(VOICE_SECTION, VoiceConfig))


@given(st.integers(min_value=0, max_value=999_999))
def test_spoken_numbers_round_trip(n):
    assert words_to_number(number_to_words(n).split()) == n


@pytest.fixture(scope="module")
def search_grammar():
    return build_grammar([w for w in load_examples() if w.name == "shipping"], VoiceConfig())


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(min_value=1, max_value=30_000))
def test_every_spoken_number_is_in_the_grammar(search_grammar, n):
    intent = search_grammar.parse(f"shipping {number_to_words(n)} grams")
    assert intent is not None and intent.inputs == {"weight_grams": n}
    assert isinstance(intent.inputs["weight_grams"], int)


@pytest.mark.parametrize(
    ("said", "workflow", "inputs"),
    [
        ("run greet with name ada", "greet", {"name": "Ada"}),
        ("say hello to grace excited", "greet", {"name": "Grace", "excited": True}),
        ("greet alan excited", "greet", {"name": "Alan", "excited": True}),
        (
            "quote two mugs and a cast iron pan",
            "quote",
            {"items": [{"quantity": 2, "sku": "MUG-001"}, {"quantity": 1, "sku": "PAN-010"}]},
        ),
        (
            "ship two hundred and fifty grams to germany express",
            "shipping",
            {"weight_grams": 250, "country": "DE", "express": True},
        ),
        (
            "search for lamp limit three tagged office and gift",
            "search",
            {"query": "lamp", "tags": ["office", "gift"], "limit": 3},
        ),
        ("add to cart three cast iron pans", "add_to_cart", {"quantity": 3, "sku": "PAN-010"}),
        ("what is in my cart", "view_cart", {}),
        # the workflow's title (metadata) is a name too
        ("price an order with a mug", "quote", {"items": [{"quantity": 1, "sku": "MUG-001"}]}),
    ],
)
def test_phrases_parse_to_typed_inputs(grammar, said, workflow, inputs):
    intent = grammar.parse(said)
    assert intent is not None, said
    assert (intent.kind, intent.workflow, intent.inputs) == ("run", workflow, inputs)


@pytest.mark.parametrize(
    ("said", "kind", "workflow"),
    [
        ("cancel it", "cancel", None),
        ("repeat that", "repeat", None),
        ("what is the status of my last order", "status", "order"),
        ("what is the status", "status", None),
        ("help", "help", None),
    ],
)
def test_session_commands(grammar, said, kind, workflow):
    intent = grammar.parse(said)
    assert intent is not None and (intent.kind, intent.workflow) == (kind, workflow)


@pytest.mark.parametrize(
    "said",
    ["", "greet name bob", "hello there", "quote two", "ship two hundred grams to spain", "cancel"],
)
def test_only_full_sentences_parse(grammar, said):
    assert grammar.parse(said) is None


def test_jsgf_names_every_workflow_and_only_known_words():
    workflows = load_examples()
    config = msgspec.convert(VOICE_SECTION, VoiceConfig)
    full = build_grammar(workflows, config)
    text = full.jsgf()
    assert text.startswith("#JSGF V1.0;") and "public <command>" in text
    for name in ("greet", "quote", "search", "view cart", "add to cart", "ship"):
        assert name in text
    # Only what the caller may run: a grammar of one workflow cannot run another.
    only_greet = build_grammar([w for w in workflows if w.name == "greet"], config)
    assert only_greet.parse("quote two mugs") is None
    assert only_greet.parse("greet ada") is not None
    # Words the recognizer does not know are left out, and listed.
    picky = build_grammar(workflows, config, known=lambda word: word != "lamp")
    assert "lamp" in picky.unspeakable and " lamp " not in picky.jsgf()
