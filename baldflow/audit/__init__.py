"""The audit trail read back: history/show/diff queries, the HTML report, plots, thumbnails."""
