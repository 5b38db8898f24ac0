"""Replies worth hearing: templates, readable renderings, numbers and units in words."""

from __future__ import annotations

import msgspec

from nexus_plugin_voice.config import VoiceConfig
from nexus_plugin_voice.replies import render_reply, spoken_value, summarise


def config(**workflows: dict) -> VoiceConfig:
    return msgspec.convert({"workflows": workflows}, VoiceConfig)


def test_numbers_and_units_are_spoken_naturally():
    assert spoken_value(250, "weight_grams") == "two hundred and fifty grams"
    assert spoken_value(1, "days") == "one day"
    assert spoken_value(1290, "total_cents") == "twelve euros and ninety cents"
    assert spoken_value(100, "cents") == "one euro"
    assert spoken_value(3.5) == "three point five"
    assert spoken_value(True) == "yes" and spoken_value(None) == "nothing"
    assert spoken_value(["a", "b", "c"]) == "a, b and c"


def test_a_template_over_the_output_fields():
    shipping = {"carrier": "DHL", "cents": 490, "days": 2}
    text = render_reply(
        "shipping", shipping, config(shipping={"reply": "{carrier} in {days} for {cents}"})
    )
    assert text == "DHL in two days for four euros and ninety cents"


def test_without_a_template_or_with_a_broken_one_the_output_is_rendered():
    shipping = {"carrier": "DHL", "cents": 490, "days": 2}
    plain = render_reply("shipping", shipping, config())
    assert plain == "shipping: carrier DHL, four euros and ninety cents, days two days"
    broken = render_reply("shipping", shipping, config(shipping={"reply": "{nope}"}))
    assert broken == plain
    assert render_reply("greet", "Hello, Ada.", config(greet={"reply": "{output}"})) == (
        "Hello, Ada."
    )


def test_long_outputs_are_summarised_with_the_run_id():
    rows = [{"sku": f"SKU-{i:03}", "quantity": i} for i in range(30)]
    text = render_reply("quote", {"lines": rows}, config(), run_id="run_123")
    assert text.endswith("The rest is in the run run_123.")
    assert len(text.split()) <= 40 + 8
    assert summarise("short answer", "run_1", 40) == "short answer"
