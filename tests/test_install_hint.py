"""Install hints say how to install a plugin where nexus-core came from: a checkout or an index."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_core import plugins
from nexus_core.plugins import install_command


def test_from_an_index_it_is_pip_install_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "_checkout", lambda: None)  # nexus-core from an index
    assert install_command("nexus-plugin-api") == "pip install nexus-plugin-api"


def test_from_a_checkout_it_is_pip_install_e_its_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checkout = tmp_path / "nexus"
    (checkout / "plugins" / "api").mkdir(parents=True)
    (checkout / "plugins" / "api" / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(plugins, "_checkout", lambda: checkout)
    monkeypatch.chdir(checkout)
    assert install_command("nexus-plugin-api") == "pip install -e plugins/api"
    elsewhere = tmp_path / "coffee"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside the checkout: the absolute folder
    assert install_command("nexus-plugin-api") == f"pip install -e {checkout / 'plugins' / 'api'}"
    # A plugin this checkout does not hold comes from an index.
    assert install_command("nexus-plugin-postgres") == "pip install nexus-plugin-postgres"


def test_this_checkout_is_found_from_direct_url_json() -> None:
    # The suite runs with nexus-core installed editable from this checkout.
    found = plugins._checkout()
    if found is None:
        pytest.skip("nexus-core is not installed editable here")
    assert (Path(found) / "nexus_core" / "plugins.py").is_file()
