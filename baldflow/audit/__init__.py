"""The audit trail read back: history/show/diff queries and the HTML report."""
