"""The smoke campaign of `make test-fast`: three real rounds through the campaign flow (the
session's Prefect server, MLflow, DVC and git in a temp dir), judged by the rules `baldflow
verify` applies. The full suite shares this campaign with the modules that read it."""

from __future__ import annotations

from baldflow.workspace.consistency import check_campaign, check_history
from baldflow.workspace.ledger import read_ledger
from baldflow.workspace.repo import Workspace


def test_three_rounds_end_consistent(finished_tiny, tiny_defaults):
    workspace, result, _ = finished_tiny
    campaign = tiny_defaults["campaign"]["name"]
    assert result["stopped"] == "rounds"
    assert check_campaign(workspace, campaign) == []
    assert check_history(workspace, campaign) == []
    rounds = {row.round for row in read_ledger(Workspace(workspace).ledger_path(campaign))}
    assert rounds == {0, 1, 2, 3}
