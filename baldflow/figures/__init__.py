"""Figures drawn from plain arrays: learning curves and image contact sheets.

Below everything that draws them: the hand-off (contact sheets for people), MLflow tracking
(the learning curve on a campaign's run) and the audit report all use these.
"""
