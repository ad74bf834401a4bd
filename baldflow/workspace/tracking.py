"""MLflow tracking of a campaign: one parent run per campaign, one nested run per round.

Logs through MlflowClient with explicit run ids: the fluent "active run" is thread-local and
Prefect may run tasks on worker threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TAG_CAMPAIGN = "baldflow.campaign"
TAG_KIND = "baldflow.kind"
TAG_ROUND = "baldflow.round"
TAG_PARENT = "mlflow.parentRunId"


def local_tracking_uri(mlflow_dir: str | Path) -> str:
    """A SQLite store inside the workspace (the file store is refused by recent MLflow)."""
    return f"sqlite:///{Path(mlflow_dir).resolve() / 'mlflow.db'}"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = "" if value is None else str(value)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    _flatten("", params, out)
    return out


class Tracker:
    """The MLflow side of a campaign; constructing it does no I/O."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | Path | None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else None
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                    parents=True, exist_ok=True
                )
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                location = self.artifact_root.as_uri() if self.artifact_root else None
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=location
                )
        return self._experiment_id

    # ------------------------------------------------------------------ runs
    def _search(self, filter_string: str) -> list:
        return list(
            self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=10000
            )
        )

    def campaign_run(self, campaign: str, params: Mapping[str, Any]) -> str:
        """The campaign's parent run, created on the first run and reopened on a resume."""
        found = self._search(
            f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'campaign'"
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=campaign,
            tags={TAG_CAMPAIGN: campaign, TAG_KIND: "campaign"},
        )
        self._log(run.info.run_id, params=flatten_params(params))
        return run.info.run_id

    def close_orphans(
        self, campaign: str, committed: Mapping[str, Mapping[str, Any]] | None = None
    ) -> list[str]:
        """Close the round runs that a killed process left RUNNING; return their ids.

        A run whose round was committed to git before the kill (`committed`: run id -> the
        round's recorded "metrics" and "tags") gets those logged and is FINISHED, since the
        round is complete; the others are KILLED, as their rounds will run again.
        """
        committed = committed or {}
        found = self._search(
            f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'round' "
            "and attributes.status = 'RUNNING'"
        )
        for run in found:
            record = committed.get(run.info.run_id)
            if record is None:
                self.client.set_terminated(run.info.run_id, status="KILLED")
                continue
            tags = {**record.get("tags", {}), "baldflow.tracking": "recovered after a kill"}
            self._log(run.info.run_id, metrics=record.get("metrics"), tags=tags)
            self.end(run.info.run_id)
        return [run.info.run_id for run in found]

    def start_round(
        self, parent_run_id: str, campaign: str, round_index: int, params: Mapping[str, Any]
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{campaign}-round-{round_index:04d}",
            tags={
                TAG_CAMPAIGN: campaign,
                TAG_KIND: "round",
                TAG_ROUND: str(round_index),
                TAG_PARENT: parent_run_id,
            },
        )
        self._log(run.info.run_id, params=flatten_params(params))
        return run.info.run_id

    def _log(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if v is not None
            ],
            params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_training_set(
        self, run_id: str, *, name: str, md5: str, rows: int, path: str, rev: str
    ) -> None:
        """Record the DVC version of the labeled set a round's model was trained on.

        The digest is DVC's md5 of the whole file: MLflow's own digest of a DataFrame would only
        look at its first rows.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=md5,
            source_type="dvc",
            source=json.dumps({"path": path, "rev": rev}),
            profile=json.dumps({"num_rows": rows}),
        )
        context = InputTag("mlflow.data.context", "training")
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def log_round(
        self,
        run_id: str,
        *,
        round_index: int,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        acquired: Sequence[Mapping[str, Any]],
        model_state: Mapping[str, Any] | None,
        model_spec: Mapping[str, Any] | None,
    ) -> None:
        """Metrics, links to git/DVC/Prefect, the acquired batch, and the model's weights."""
        self._log(run_id, metrics=metrics, tags=tags, step=round_index)
        if acquired:
            import pandas as pd

            self.client.log_table(
                run_id, data=pd.DataFrame(list(acquired)), artifact_file="acquired.json"
            )
        if model_state is not None:
            import tempfile

            import torch

            with tempfile.TemporaryDirectory() as tmp:
                # A state_dict plus the spec that rebuilds the module: a traced model would not
                # keep dropout stochastic, and this needs no pip-requirement inference.
                torch.save(dict(model_state), Path(tmp) / "state_dict.pt")
                (Path(tmp) / "spec.json").write_text(json.dumps(dict(model_spec or {}), indent=2))
                self.client.log_artifacts(run_id, tmp, artifact_path="model")

    def finish_round(self, run_id: str, round_index: int, metrics: Mapping[str, float]) -> None:
        self._log(run_id, metrics=metrics, step=round_index)
        self.end(run_id)

    def park(self, run_id: str, metrics: Mapping[str, float], round_index: int) -> None:
        """A round waiting for people's labels: its run is SCHEDULED, not RUNNING.

        SCHEDULED keeps it out of close_orphans (which kills RUNNING runs a crash left behind)
        while the batch waits, however long that takes.
        """
        self._log(
            run_id, metrics=metrics, tags={"baldflow.state": "waiting-for-labels"}, step=round_index
        )
        self.client.update_run(run_id, status="SCHEDULED")

    def unpark(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        self._log(run_id, tags={"baldflow.state": "labeled"})

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def round_metrics(self, campaign: str) -> list[dict[str, Any]]:
        """Finished round runs of a campaign with their metrics, ordered by round."""
        found = self._search(
            f"tags.`{TAG_CAMPAIGN}` = '{campaign}' and tags.`{TAG_KIND}` = 'round' "
            "and attributes.status = 'FINISHED'"
        )
        rows = []
        for run in found:
            rows.append(
                {
                    "round": int(run.data.tags[TAG_ROUND]),
                    "run_id": run.info.run_id,
                    **run.data.metrics,
                }
            )
        return sorted(rows, key=lambda r: r["round"])

    def log_learning_curve(
        self, parent_run_id: str, rows: Sequence[Mapping[str, Any]], title: str
    ) -> None:
        """Test accuracy against labeled-set size, as a PNG on the campaign's parent run."""
        from baldflow.audit.plots import learning_curve_figure

        points = [r for r in rows if r.get("test_accuracy") not in (None, "")]
        fig = learning_curve_figure(rows, title)
        self.client.log_figure(parent_run_id, fig, "learning_curve.png")
        if points:
            self._log(
                parent_run_id,
                metrics={
                    "final_test_accuracy": float(points[-1]["test_accuracy"]),
                    "final_train_size": float(points[-1]["train_size"]),
                },
            )
