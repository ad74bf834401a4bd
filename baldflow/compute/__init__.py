"""A round's compute as plain functions (no Prefect, no I/O of the workspace's own).

One module a job: the campaign's pool (`campaign_data`), training and evaluation (`fitting`),
the scoring plan and pool scoring (`scoring`), scoring in shards (`sharding`, which uses
`scoring`, never the other way), choosing the batch (`selecting`), the batch evidence
(`evidence`), the labelers' pre-annotations (`predictions`) and where compute runs (`device`).
The Prefect tasks in tasks/ wrap these; tests and notebooks can call them directly.
"""
