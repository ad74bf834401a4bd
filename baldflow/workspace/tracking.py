"""MLflow tracking of a campaign: one parent run per campaign, one nested run per round.

Logs through MlflowClient with explicit run ids: the fluent "active run" is thread-local and
Prefect may run tasks on worker threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from baldflow.faults import fault_point

TAG_CAMPAIGN = "baldflow.campaign"
TAG_KIND = "baldflow.kind"
TAG_ROUND = "baldflow.round"
TAG_WORKSPACE = "baldflow.workspace_id"
TAG_PARENT = "mlflow.parentRunId"
# Team mode: who ran a run, from which clone, pushing to which git remote. Round runs are
# looked up and repaired per clone: two clones may run the same round at the same time.
TAG_OPERATOR = "baldflow.operator"
TAG_CLONE = "baldflow.clone_id"
TAG_GIT_REMOTE = "baldflow.git_remote"
TAG_DISCARDED = "baldflow.discarded"
# MLflow's own tag listing a run's table artifacts, which its UI reads to show them as tables.
TAG_LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"
ACQUIRED_TABLE = "acquired.json"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The metrics without which a committed round's run is incomplete and gets repaired.
REQUIRED_ROUND_METRICS = ("test_accuracy", "labeled_size")


def local_tracking_uri(mlflow_dir: str | Path) -> str:
    """A SQLite store inside the workspace (the file store is refused by recent MLflow)."""
    return f"sqlite:///{Path(mlflow_dir).resolve() / 'mlflow.db'}"


def sqlite_store_path(tracking_uri: str) -> Path | None:
    """The file of a local SQLite tracking store (`sqlite:///PATH`); None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


def read_only_store(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """MLflow's SQLite file opened read-only, for readers that must be fast (no mlflow import)
    and must never change the store."""
    return contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))


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


def tracker_for(mlflow_uri: str | None, experiment: str, workspace: Any) -> Tracker:
    """The tracker of a workspace: the configured server, else the store inside it."""
    from baldflow.workspace import remote

    if mlflow_uri:
        # A server stores artifacts where it was told to; a SQLite store given by path would
        # otherwise put them in ./mlruns of whatever directory the run started in.
        store = sqlite_store_path(mlflow_uri)
        artifacts = store.parent / "artifacts" if store is not None else None
        uri = mlflow_uri
    else:
        uri = local_tracking_uri(workspace.mlflow_dir)
        artifacts = workspace.mlflow_dir / "artifacts"
    return Tracker(
        uri,
        experiment,
        artifacts,
        workspace.workspace_id,
        clone_id=remote.clone_id(workspace),
        operator=remote.operator(workspace, uri),
        git_remote=remote.remote_url(workspace) or "",
    )


def ensure_sqlite_store(path: Path) -> None:
    """Create a SQLite tracking store, all or nothing.

    MLflow creates its tables in place on first use: a process killed halfway leaves a file
    every later run fails on ("table ... already exists"). The store is built under a temporary
    name and renamed into place once MLflow has finished with it.
    """
    if path.exists():
        return
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".creating-*"):
        stale.unlink(missing_ok=True)  # what a killed creation left
    tmp = path.with_name(f"{path.name}.creating-{os.getpid()}")
    MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
    os.replace(tmp, path)


def ensure_experiment(client: Any, experiment: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it (artifacts under `artifact_root` if given) if needed."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    # MLflow 3's UI opens an experiment of unknown kind on its GenAI overview ("No data");
    # naming it a model-development experiment opens it on its runs.
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(
            experiment,
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
        )
    except MlflowException as error:
        # Another clone created it between the lookup and here (two runs started at once on
        # a shared server): theirs is the campaign's experiment too.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


class Tracker:
    """The MLflow side of one workspace's campaigns; constructing it does no I/O.

    Every run it creates is tagged with the workspace id, and every search is scoped by it:
    on a shared tracking server another workspace's runs (even of a campaign with the same
    name) are never reopened, repaired or closed from here.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        artifact_root: str | Path | None,
        workspace_id: str,
        *,
        clone_id: str = "",
        operator: str = "",
        git_remote: str = "",
    ):
        if not workspace_id:
            raise ValueError("a Tracker needs the workspace id its runs belong to")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = Path(artifact_root).resolve() if artifact_root else None
        self.workspace_id = workspace_id
        self.clone_id = clone_id
        self.operator = operator
        self.git_remote = git_remote
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            store = sqlite_store_path(self.tracking_uri)
            if store is not None:
                ensure_sqlite_store(store)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = ensure_experiment(
                self.client, self.experiment, self.artifact_root
            )
        return self._experiment_id

    # ------------------------------------------------------------------ runs
    def _search(self, campaign: str, kind: str, *conditions: str) -> list:
        """This workspace's runs of a campaign of one kind ("campaign" or "round")."""
        clauses = [
            f"tags.`{TAG_WORKSPACE}` = '{self.workspace_id}'",
            f"tags.`{TAG_CAMPAIGN}` = '{campaign}'",
            f"tags.`{TAG_KIND}` = '{kind}'",
            *conditions,
        ]
        return list(
            self.client.search_runs(
                [self.experiment_id], filter_string=" and ".join(clauses), max_results=10000
            )
        )

    def _tags(self, campaign: str, kind: str, **extra: str) -> dict[str, str]:
        # mlflow.user is what the MLflow UI shows as the run's user: the operator, not the
        # login of whichever machine the run happened on.
        team = {TAG_CLONE: self.clone_id, TAG_OPERATOR: self.operator, "mlflow.user": self.operator}
        if self.git_remote:
            team[TAG_GIT_REMOTE] = self.git_remote
        return {
            TAG_WORKSPACE: self.workspace_id,
            TAG_CAMPAIGN: campaign,
            TAG_KIND: kind,
            **{k: v for k, v in team.items() if v},
            **extra,
        }

    def _ours(self, run: Any) -> bool:
        """A run this clone opened (runs from before clone ids count as this clone's)."""
        tagged = run.data.tags.get(TAG_CLONE)
        return not tagged or not self.clone_id or tagged == self.clone_id

    def _reopen(self, run_id: str) -> bool:
        """Mark this workspace's run RUNNING again; False if this store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.data.tags.get(TAG_WORKSPACE) != self.workspace_id or (
            run.info.lifecycle_stage == "deleted"
        ):
            return False
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return True

    def adopt_campaign_run(self, orphan: str, anchored: str) -> str:
        """Take the parent run git names (another clone's round 0 won) instead of `orphan`,
        which this clone opened for a round 0 that lost: it is deleted, so the campaign keeps
        one parent run. Returns the parent to use from now on."""
        if orphan == anchored or not self._reopen(anchored):
            return orphan
        if self._ours(self.client.get_run(orphan)):
            self.retire_campaign_run(orphan, f"round 0 was committed with {anchored}")
        return anchored

    def retire_campaign_run(self, run_id: str, why: str) -> bool:
        """Retire a parent run no committed round names: tagged why, KILLED, then deleted, so
        the campaign shows one parent. False when it was gone already, or is not this
        workspace's run, or has round runs under it (those must keep their parent)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if (
            run.data.tags.get(TAG_WORKSPACE) != self.workspace_id
            or run.data.tags.get(TAG_KIND) != "campaign"
            or run.info.lifecycle_stage == "deleted"
        ):
            return False
        children = self.client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{run_id}'",
            max_results=1,
        )  # fmt: skip
        if children:
            return False
        self.client.set_tag(run_id, TAG_DISCARDED, why[:4000])
        if run.info.status != "KILLED":
            self.client.set_terminated(run_id, status="KILLED")
        self.client.delete_run(run_id)
        return True

    def retire_stray_campaign_runs(self, campaign: str, anchored: str) -> dict[str, list[str]]:
        """Retire the campaign's other parent runs, now that `anchored` is the one git names.

        They are what a clone left when its run stopped before its round 0 was committed (a
        clone that lost the race to create a shared object, in releases before that was
        handled). Another clone's RUNNING parent is left alone: that clone may be running
        right now and adopts the anchored parent at its next sync. Returns the ids "retired"
        and those that "failed" (a server that refuses to delete another user's run).
        """
        from mlflow.exceptions import MlflowException

        done: dict[str, list[str]] = {"retired": [], "failed": []}
        for run in self._search(campaign, "campaign"):
            run_id = run.info.run_id
            if run_id == anchored or (run.info.status == "RUNNING" and not self._ours(run)):
                continue
            why = f"a stray parent run: round 0 of {campaign} was committed with {anchored}"
            try:
                if self.retire_campaign_run(run_id, why):
                    done["retired"].append(run_id)
            except MlflowException as error:
                done["failed"].append(f"{run_id} ({error.error_code})")
        return done

    def discard(self, run_id: str, why: str) -> None:
        """Close the run of a round another clone committed first, saying so."""
        self.client.set_tag(run_id, TAG_DISCARDED, why[:4000])
        if self.client.get_run(run_id).info.status != "KILLED":
            self.client.set_terminated(run_id, status="KILLED")

    def campaign_run(
        self, campaign: str, params: Mapping[str, Any], anchored: str | None = None
    ) -> str:
        """The campaign's parent run, created on the first run and reopened on a resume.

        `anchored`: the run git recorded as the parent (round 0's ledger rows name it), which
        every clone of a shared workspace adopts. Before round 0 is committed each clone has
        a parent of its own; the one whose round 0 loses retires it (see retire_campaign_run).
        """
        if anchored and self._reopen(anchored):
            return anchored
        found = [run for run in self._search(campaign, "campaign") if self._ours(run)]
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=campaign,
            tags=self._tags(campaign, "campaign"),
        )
        self._log(run.info.run_id, params=flatten_params(params))
        return run.info.run_id

    def repair(
        self, campaign: str, committed: Mapping[int, Mapping[str, Any]]
    ) -> dict[str, list[str]]:
        """Make MLflow agree with git after a killed or failed run; return what was done.

        `committed` maps each round that git committed (r >= 1) to what the workspace recorded
        of it: "run_id", "metrics", "tags" and the "acquired" table. A committed round's run
        that is not FINISHED or lacks its metrics gets them and is FINISHED, since the round is
        complete; a round run left RUNNING whose round was not committed is KILLED (the round
        runs again and reopens it). Parked runs (SCHEDULED, waiting for labels) are left alone,
        unless their round was committed with another run ("retired": KILLED, tagged why).
        """
        done: dict[str, list[str]] = {"repaired": [], "killed": [], "retired": []}
        by_run = {str(rec["run_id"]): rec for rec in committed.values() if rec.get("run_id")}
        for run in self._search(campaign, "round"):
            if self._retire_parked(run, committed, by_run):
                done["retired"].append(run.info.run_id)
                continue
            if not self._ours(run):
                continue  # another clone's run: that clone repairs it, maybe right now
            run_id = run.info.run_id
            record = by_run.get(run_id)
            if record is None:
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run_id, status="KILLED")
                    done["killed"].append(run_id)
                continue
            metrics = run.data.metrics
            complete = all(name in metrics for name in REQUIRED_ROUND_METRICS)
            if run.info.status == "FINISHED" and complete:
                continue
            round_index = int(run.data.tags.get(TAG_ROUND, "0"))
            tags = {**record.get("tags", {}), "baldflow.tracking": "repaired from git"}
            self._log(run_id, metrics=record.get("metrics"), tags=tags, step=round_index)
            if record.get("acquired"):
                self.log_acquired(run_id, record["acquired"])
            self.end(run_id)
            done["repaired"].append(run_id)
        return done

    def _retire_parked(
        self, run: Any, committed: Mapping[int, Mapping[str, Any]], by_run: Mapping[str, Any]
    ) -> bool:
        """KILL a run parked for people's labels (SCHEDULED) of a round that git committed with
        another run: another clone committed that round first, so this batch can never
        complete it. Any clone may do it, since no clone can use the run again; a server that
        refuses to change another user's run leaves it to that run's clone (False)."""
        from mlflow.exceptions import MlflowException

        tagged = run.data.tags.get(TAG_ROUND, "")
        if run.info.status != "SCHEDULED" or run.info.run_id in by_run or not tagged.isdigit():
            return False
        record = committed.get(int(tagged))
        if record is None:
            return False
        why = f"round {tagged} was committed with MLflow run {record.get('run_id') or '?'}"
        try:
            self.discard(run.info.run_id, why)
        except MlflowException:
            if self._ours(run):
                raise
            return False
        return True

    def round_run(
        self, parent_run_id: str, campaign: str, round_index: int, params: Mapping[str, Any]
    ) -> str:
        """The round's run: the one an earlier attempt at this round opened, else a new one.

        Looking it up first makes a retried or resumed start idempotent: a round has one run,
        however often it was started.
        """
        found = [
            run
            for run in self._search(campaign, "round", f"tags.`{TAG_ROUND}` = '{round_index}'")
            if self._ours(run) and TAG_DISCARDED not in run.data.tags
        ]
        if found:
            run = max(found, key=lambda r: r.info.start_time or 0)
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{campaign}-round-{round_index:04d}",
            tags=self._tags(
                campaign, "round", **{TAG_ROUND: str(round_index), TAG_PARENT: parent_run_id}
            ),
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
        """Metrics, links to git/DVC/Prefect, the acquired batch, and the model's weights.

        Safe to run twice: metrics and tags are set again to the same values, and the table and
        model files are overwritten, never appended to.
        """
        self._log(run_id, metrics=metrics, tags=tags, step=round_index)
        fault_point("track:metrics-logged", round_index)
        if acquired:
            self.log_acquired(run_id, acquired)
        fault_point("track:table-logged", round_index)
        if model_state is not None:
            import tempfile

            from baldflow.models.weights import save_model_files

            with tempfile.TemporaryDirectory() as tmp:
                # A state_dict plus the spec that rebuilds the module: a traced model would not
                # keep dropout stochastic, and this needs no pip-requirement inference.
                save_model_files(tmp, model_state, model_spec or {})
                self.client.log_artifacts(run_id, tmp, artifact_path="model")
        fault_point("track:model-logged", round_index)

    def log_acquired(self, run_id: str, acquired: Sequence[Mapping[str, Any]]) -> None:
        """The acquired batch as a table artifact, replacing any earlier copy.

        MLflow's log_table appends to an existing table, so a retried round would list its
        batch twice: write the same "split" JSON it writes, as a file that overwrites.
        """
        import tempfile

        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ACQUIRED_TABLE
            pd.DataFrame(list(acquired)).to_json(path, orient="split", index=False)
            self.client.log_artifact(run_id, str(path))
        listed = json.loads(
            self.client.get_run(run_id).data.tags.get(TAG_LOGGED_ARTIFACTS, "[]") or "[]"
        )
        entry = {"path": ACQUIRED_TABLE, "type": "table"}
        if entry not in listed:
            self.client.set_tag(run_id, TAG_LOGGED_ARTIFACTS, json.dumps([*listed, entry]))

    def finish_round(self, run_id: str, round_index: int, metrics: Mapping[str, float]) -> None:
        self._log(run_id, metrics=metrics, step=round_index)
        self.end(run_id)

    def park(self, run_id: str, metrics: Mapping[str, float], round_index: int) -> None:
        """A round waiting for people's labels: its run is SCHEDULED, not RUNNING.

        SCHEDULED keeps it out of repair (which kills RUNNING runs a crash left behind)
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
        found = self._search(campaign, "round", "attributes.status = 'FINISHED'")
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
        from baldflow.figures.plots import learning_curve_figure

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
