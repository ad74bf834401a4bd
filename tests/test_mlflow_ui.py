"""What the docs say of the MLflow UI (docs/results.md) is what MLflow 3.17's UI shows a person.

A finished campaign's store behind a real MLflow server, the link baldflow prints opened in
headless Chromium: the page is the experiment's "Training runs" list, the campaign is one
parent row, and that row expands to the round runs. The docs name the same things.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from browser import Browser, available  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not available(), reason="needs Debian's chromium")

# The page's visible text: enough for the checks and a readable failure message.
SNAPSHOT = "document.body ? document.body.innerText : ''"


@pytest.fixture(scope="module")
def campaign_in_the_ui(tmp_path_factory, prefect_harness, tiny_defaults):
    from baldflow.flows.campaign import campaign_flow
    from baldflow.stack.mlflow_server import MlflowServer

    params = copy.deepcopy(tiny_defaults)
    params["campaign"]["name"] = "ui-check"
    workspace = tmp_path_factory.mktemp("mlflow-ui") / "ws"
    campaign_flow(workspace=str(workspace), params=params, campaign="ui-check")
    server = MlflowServer(
        tmp_path_factory.mktemp("mlflow-ui-server"),
        f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}",
        str(workspace / "mlflow" / "artifacts"),
        workers=1,
    ).start()
    try:
        yield server.url, tiny_defaults["campaign"]["rounds"]
    finally:
        server.stop()


def test_the_printed_link_opens_training_runs_with_the_campaign_as_one_expandable_row(
    campaign_in_the_ui,
):
    from baldflow.audit.hints import mlflow_ui_url

    url, rounds = campaign_in_the_ui
    with Browser() as browser:
        browser.navigate(mlflow_ui_url(url, 1))
        text = browser.wait_for(SNAPSHOT, until=lambda t: "ui-check" in (t or ""), timeout=90)
        assert "Training runs" in text
        # Collapsed, the table holds the parent only: the rounds are behind its expander.
        assert "ui-check-round-0001" not in text
        # The run-name cell of a parent run starts with its expander (a "+" icon button).
        clicked = browser.evaluate(
            "(() => { const name = [...document.querySelectorAll('a')]"
            ".find(a => a.innerText.trim() === 'ui-check');"
            " const cell = name && name.closest('.ag-cell-wrapper');"
            " const button = cell && cell.querySelector('button');"
            " if (button) { button.click(); return true } return false })()"
        )
        assert clicked, "no expander on the campaign's row"
        expanded = browser.wait_for(
            SNAPSHOT, until=lambda t: f"ui-check-round-{rounds:04d}" in (t or ""), timeout=30
        )
    for r in range(1, rounds + 1):
        assert f"ui-check-round-{r:04d}" in expanded


def test_the_docs_use_the_names_the_ui_shows():
    page = (ROOT / "docs" / "results.md").read_text()
    section = page[page.index("# Reading the results"):]
    section = " ".join(section[: section.index("**Prefect**")].split())
    assert "Training runs" in section
    assert "expand" in section
    assert "every campaign of the workspace" in section
    # MLflow 3.17 has no "Runs" tab: the page is called Training runs.
    assert "**Runs** tab" not in section
