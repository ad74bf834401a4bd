"""A pending batch as tasks of the campaign's Label Studio project, and people's annotations
back as the round's labels.

Sending (`send_batch`) and pulling (`pull_annotations`) are each safe to run again at any
point, because both look at what the server holds before they act:
- The campaign's project is found by the campaign key in its description, so a process killed
  between creating the project and recording its id adopts it instead of creating a second;
  clones that create it at the same instant converge on the oldest (each looks again after
  creating, and whoever made a younger one deletes it).
- Each round's batch gets a Data Manager tab, "round N", filtered to the batch's tasks.
- Tasks carry the batch key; a send imports only the batch's samples that have no task yet,
  so a send killed after the import imports nothing the second time.
- What was sent is recorded in the hand-off folder (`label-studio.json`: project id, and per
  round the task id of each sample). A pull compares the server with it: a recorded task that
  is gone was deleted in Label Studio, a task whose data differs was edited there; both are
  refused with the samples named, as are annotations outside the class list and, by default,
  disagreeing annotations of one sample.
- A pull stores nothing until every sample of the batch has an annotation that was not
  cancelled; then it writes the round's labels file in one atomic step, the same file a CSV
  import writes, and the round completes through the same tasks as with every other oracle.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from baldflow.common import atomic_write_text, printable, short_repr, utc_now
from baldflow.faults import fault_point
from baldflow.labeling.handoff import LABELS_FIELDS, HandOff, PendingRound
from baldflow.labeling.importing import LabelImportError
from baldflow.labeling.label_studio import LabelStudioClient, LabelStudioError

LINK_FILE = "label-studio.json"
# Where a campaign's pictures go under the server's document root.
PICTURES_DIR = "baldflow"
CONFLICT_RULES = ("refuse", "majority")
# Label Studio refuses longer project titles.
TITLE_LIMIT = 50


def campaign_key(workspace_id: str, campaign: str) -> str:
    """The campaign's mark on its project (and its pictures' folder): stable across clones
    of a workspace, different for a campaign of the same name in another workspace."""
    return hashlib.sha256(f"{workspace_id}\0{campaign}".encode()).hexdigest()[:16]


def batch_key(pending: PendingRound) -> str:
    """Tells this batch's tasks from those of a batch chosen earlier for the same round (and
    later abandoned): the round, the labeled set it was chosen from and its samples."""
    text = json.dumps([pending.campaign, pending.round, pending.base_md5, pending.sample_ids])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def label_config(class_names: Sequence[str], images: bool) -> str:
    """The labeling form: the item (image or text) and one single choice among the classes,
    required: the form refuses a submission without one. Only the form: the API takes any
    result, so a pull checks every annotation again (`_chosen_label`).

    Class names come from user data: each is an XML attribute value, quoted and escaped.
    """
    item = '<Image name="item" value="$image"/>' if images else '<Text name="item" value="$text"/>'
    choices = "".join(f"<Choice value={quoteattr(str(name))}/>" for name in class_names)
    return (
        f'<View>{item}<Choices name="label" toName="item" choice="single" showInline="true" '
        f'required="true" requiredMessage="Choose the class of this item">'
        f"{choices}</Choices></View>"
    )


def picture_path(key: str, round_index: int, sample_id: str) -> str:
    """A sample's picture, relative to the document root. Named by a hash of the id: ids are
    untrusted text and never become file names."""
    digest = hashlib.sha256(sample_id.encode()).hexdigest()[:24]
    return f"{PICTURES_DIR}/{key}/round-{round_index:04d}/{digest}.png"


@dataclasses.dataclass
class StudioLink:
    """What was sent to Label Studio for a campaign, kept in its hand-off folder (git-ignored;
    clearing a round's hand-off files leaves it)."""

    handoff: HandOff
    project_id: int | None = None
    url: str = ""
    rounds: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.handoff.dir / LINK_FILE

    @classmethod
    def load(cls, handoff: HandOff) -> StudioLink:
        link = cls(handoff)
        if link.path.exists():
            data = json.loads(link.path.read_text(encoding="utf-8"))
            link.project_id, link.url = data.get("project_id"), data.get("url", "")
            link.rounds = data.get("rounds", {})
        return link

    def save(self) -> None:
        self.handoff.ensure_dir()
        body = {"project_id": self.project_id, "url": self.url, "rounds": self.rounds}
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class SendResult:
    project_id: int
    created_project: bool
    imported: int
    already_there: int


@dataclasses.dataclass(frozen=True)
class PullResult:
    round: int
    project_id: int
    annotated: int
    batch_size: int
    decisions: list[str]

    @property
    def complete(self) -> bool:
        return self.annotated == self.batch_size


# -------------------------------------------------------------------------------- sending
def pictures_of(
    images: Any, pending: PendingRound, sample_ids: Sequence[str]
) -> dict[str, bytes] | None:
    """PNG bytes of some samples of the batch, from the batch's images (rows in the order of
    its sample ids); None for data that is not images."""
    if images is None:
        return None
    from baldflow.figures.thumbnails import image_png

    row = {sid: i for i, sid in enumerate(pending.sample_ids)}
    return {sid: image_png(images[row[sid]]) for sid in sample_ids}


def _ensure_project(
    client: LabelStudioClient, link: StudioLink, pending: PendingRound, key: str, images: bool
) -> tuple[int, bool]:
    marker = f"baldflow campaign key: {key}"
    if link.project_id is not None:
        project = client.project(link.project_id)
        if project is not None and marker in (project.get("description") or ""):
            return int(link.project_id), False
    def marked() -> list[int]:
        return sorted(
            int(p["id"]) for p in client.projects() if marker in (p.get("description") or "")
        )

    found = marked()
    if found:  # the oldest: the one clones that raced to create it agree on
        link.project_id, link.url = found[0], client.url
        link.save()
        return link.project_id, False
    title = f"baldflow {pending.campaign}"[:TITLE_LIMIT]
    description = (
        f"Active-learning batches of campaign {pending.campaign}, one per round, chosen by "
        f"baldflow. Label each item with its class.\n{marker}"
    )
    made = int(client.create_project(
        title, description, label_config(pending.class_names, images)
    )["id"])  # fmt: skip
    # Another clone may have created one at the same instant: the oldest (lowest id) is the
    # campaign's; a younger one is deleted by whoever made it, who looks after its own
    # creation and so sees every project made before it.
    found = marked()
    winner = found[0] if found and found[0] < made else made
    if winner != made:
        client.delete_project(made)
    link.project_id, link.url = winner, client.url
    link.save()
    return winner, winner == made


def round_view_title(round_index: int) -> str:
    return f"round {int(round_index)}"


def round_filters(pending: PendingRound, bkey: str) -> dict[str, Any]:
    """The Data Manager filter of a batch's tasks: its round and its batch key."""
    return {"conjunction": "and", "items": [
        {"filter": "filter:tasks:data.round", "operator": "equal", "type": "Number",
         "value": int(pending.round)},
        {"filter": "filter:tasks:data.batch", "operator": "equal", "type": "String",
         "value": bkey},
    ]}  # fmt: skip


def ensure_round_view(
    client: LabelStudioClient, project_id: int, pending: PendingRound, bkey: str
) -> int:
    """The project's Data Manager tab "round N" showing this batch's tasks: made once, its
    filter brought up to date when the round's batch was chosen again; duplicates (clones
    sending at one instant) converge on the oldest. Returns its id."""
    title, filters = round_view_title(pending.round), round_filters(pending, bkey)

    def named() -> list[dict[str, Any]]:
        return [v for v in client.views(project_id) if (v.get("data") or {}).get("title") == title]

    found = named()
    if not found:
        client.create_view(project_id, title, filters)
        found = named()
    keep, *extra = found
    for view in extra:
        client.delete_view(int(view["id"]))
    if (keep.get("data") or {}).get("filters") != filters:
        client.update_view(int(keep["id"]), project_id, title, filters)
    return int(keep["id"])


def _task_data(
    pending: PendingRound, sample_id: str, bkey: str, image: str | None, item: str
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sample_id": sample_id,
        "round": pending.round,
        "campaign": pending.campaign,
        "batch": bkey,
    }
    if image is not None:
        data["image"] = image
    else:
        data["text"] = item
    return data


def _prediction(pending: PendingRound, sample_id: str) -> list[dict[str, Any]]:
    """The round model's guess as a pre-annotation: its top class and that class's mean
    predictive probability (none for round 0, which has no model yet)."""
    probs = pending.predictions.get(sample_id)
    if not probs:
        return []
    top = max(range(len(probs)), key=lambda c: probs[c])
    choice = {"choices": [str(pending.class_names[top])]}
    return [{
        "model_version": model_version(pending),
        "score": float(probs[top]),
        "result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": choice}],
    }]  # fmt: skip


def model_version(pending: PendingRound) -> str:
    return f"{pending.campaign} round {pending.round}"


def _task_ids(
    client: LabelStudioClient, project_id: int, bkey: str, *, dedupe: bool = False
) -> dict[str, int]:
    """Sample id -> task id of the batch's tasks that the project holds now: the oldest task
    of a sample, when clones that sent the batch at one instant both imported it. With
    `dedupe`, such younger duplicates that nobody annotated yet are deleted (by whichever
    clone looks; a task gone already is no error)."""
    found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for task in client.tasks(project_id):
        data = task.get("data") or {}
        if data.get("batch") == bkey:
            found[str(data.get("sample_id"))].append(task)
    ids = {}
    for sample_id, tasks in found.items():
        oldest, *younger = sorted(tasks, key=lambda t: int(t["id"]))
        ids[sample_id] = int(oldest["id"])
        for task in younger:
            if dedupe and not task.get("annotations"):
                client.delete_task(int(task["id"]))
    return ids


def send_batch(
    client: LabelStudioClient,
    handoff: HandOff,
    pending: PendingRound,
    *,
    workspace_id: str,
    images: Any,
    resend: bool = False,
) -> SendResult:
    """Make the batch a set of tasks in the campaign's project (created on first use).

    `images`: the batch's images, rows in the order of `pending.sample_ids` (None: the items
    are text, or, with `resend`, pictures written by an earlier send). A picture is made only
    for a sample that gets a task; it goes under the server's document root when this
    machine sees it, else into the task as a data URI. Without `resend` a round already
    recorded as sent is left as it is; with it, samples whose task was deleted in Label
    Studio get a new one.
    """
    link = StudioLink.load(handoff)
    bkey = batch_key(pending)
    recorded = link.rounds.get(str(pending.round))
    if recorded and recorded.get("batch") == bkey and not resend:
        return SendResult(int(recorded["project_id"]), False, 0, len(recorded["tasks"]))
    key = campaign_key(workspace_id, pending.campaign)
    has_pictures = images is not None or bool(recorded and recorded.get("images"))
    project_id, created = _ensure_project(client, link, pending, key, has_pictures)
    existing = _task_ids(client, project_id, bkey)
    missing = [sid for sid in pending.sample_ids if sid not in existing]
    if missing:
        pictures = pictures_of(images, pending, missing)
        sources = _picture_sources(
            client, project_id, key, pending, missing, pictures, has_pictures
        )
        items = dict(zip(pending.sample_ids, pending.items, strict=True))
        tasks = [
            {
                "data": _task_data(pending, sid, bkey, sources.get(sid), items[sid]),
                "predictions": _prediction(pending, sid),
            }
            for sid in missing
        ]
        client.import_tasks(project_id, tasks)
        fault_point("label-studio-send:imported", pending.round)
        existing = _task_ids(client, project_id, bkey, dedupe=True)
    if pending.predictions:
        client.set_model_version(project_id, model_version(pending))
    view = ensure_round_view(client, project_id, pending, bkey)
    link.rounds[str(pending.round)] = {
        "batch": bkey,
        "project_id": project_id,
        "images": has_pictures,
        "tasks": {sid: existing[sid] for sid in pending.sample_ids if sid in existing},
        "view": view,
        "sent_at": utc_now(),
    }
    link.save()
    return SendResult(project_id, created, len(missing), len(pending.sample_ids) - len(missing))


def _picture_sources(
    client: LabelStudioClient,
    project_id: int,
    key: str,
    pending: PendingRound,
    sample_ids: Sequence[str],
    pictures: Mapping[str, bytes] | None,
    images: bool,
) -> dict[str, str]:
    """The `image` field of each task: a local-files URL the server serves, or a data URI."""
    if not images:
        return {}
    root = client.connection.document_root
    if root is None:
        if pictures is None:
            raise LabelStudioError(
                "the pictures of the deleted tasks are gone (no document root to find them "
                "in): label the remaining tasks, or remove the pending batch to choose anew"
            )
        from baldflow.figures.thumbnails import png_data_uri

        return {sid: png_data_uri(pictures[sid]) for sid in sample_ids}
    folder = root / PICTURES_DIR / key
    sources = {}
    for sid in sample_ids:
        relative = picture_path(key, pending.round, sid)
        target = root / relative
        if pictures is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(pictures[sid])
            tmp.replace(target)
        elif not target.is_file():
            raise LabelStudioError(f"the picture of sample {short_repr(sid)} is gone ({target})")
        sources[sid] = f"/data/local-files/?d={relative}"
    # Label Studio serves a local file only to a project with a storage that covers it.
    if not any(Path(s.get("path", "")) == folder for s in client.local_storages(project_id)):
        client.add_local_storage(project_id, folder, f"baldflow pictures {key}")
    return sources


# -------------------------------------------------------------------------------- pulling
def _chosen_label(
    annotation: Mapping[str, Any], sample_id: str, class_names: Sequence[str]
) -> tuple[int | None, str | None]:
    """The class index an annotation chose, or the problem with it."""
    where = f"sample {short_repr(sample_id)}, annotation {annotation.get('id')}"
    values = [
        choice
        for item in annotation.get("result") or []
        if item.get("type") == "choices" and item.get("from_name") == "label"
        for choice in (item.get("value") or {}).get("choices") or []
    ]
    if not values:
        return None, f"{where}: no class chosen (an empty annotation: cancel it or choose one)"
    if len(set(values)) > 1:
        shown = ", ".join(short_repr(str(v), 40) for v in values)
        return None, f"{where}: several classes chosen ({shown})"
    name = str(values[0])
    if name not in class_names:
        classes = ", ".join(str(c) for c in class_names)
        return None, f"{where}: {short_repr(name, 60)} is not a class (classes: {classes})"
    return list(class_names).index(name), None


@dataclasses.dataclass(frozen=True)
class _Vote:
    label: int
    who: str
    annotation_id: int
    task_id: int


def _settle(
    sample_id: str, votes: Sequence[_Vote], class_names: Sequence[str], rule: str
) -> tuple[_Vote | None, str, str | None]:
    """The label of a sample from its annotations: (winning vote, decision, problem)."""
    labels = collections.Counter(v.label for v in votes)
    if len(labels) == 1:
        return votes[0], "", None
    said = "; ".join(
        f"{v.who} chose {short_repr(str(class_names[v.label]), 40)} (annotation {v.annotation_id})"
        for v in votes
    )
    ranked = labels.most_common()
    if rule == "majority" and ranked[0][1] > ranked[1][1]:
        winner = next(v for v in votes if v.label == ranked[0][0])
        return winner, f"majority {ranked[0][1]} of {len(votes)} ({said})", None
    problem = f"sample {short_repr(sample_id)}: annotators disagree ({said})"
    if rule == "majority":
        problem += ": no majority; settle it in Label Studio"
    else:
        problem += (
            ": settle it in Label Studio, or set oracle.label_studio.conflicts: majority"
        )
    return None, "", problem


def pull_annotations(
    client: LabelStudioClient, handoff: HandOff, pending: PendingRound, *, conflicts: str
) -> PullResult:
    """Check the batch's tasks and annotations; once every sample has one, store its labels.

    Raises LabelImportError listing every problem (nothing stored), LabelStudioError when the
    batch was never sent.
    """
    if conflicts not in CONFLICT_RULES:
        raise ValueError(f"conflicts must be one of {CONFLICT_RULES}, got {conflicts!r}")
    link = StudioLink.load(handoff)
    bkey = batch_key(pending)
    recorded = link.rounds.get(str(pending.round))
    if not recorded or recorded.get("batch") != bkey:
        raise LabelStudioError(
            f"round {pending.round} of {pending.campaign} has not been sent to Label Studio "
            "yet: `baldflow run` (or the next cycle) sends it"
        )
    project_id = int(recorded["project_id"])
    where = f"Label Studio project {project_id} (round {pending.round} of {pending.campaign})"
    if client.project(project_id) is None:
        raise LabelImportError(where, [
            f"project {project_id} was deleted in Label Studio: `baldflow label pull --resend` "
            "sends the batch to a new project"
        ])  # fmt: skip
    tasks = client.tasks(project_id)
    emails = client.user_emails()
    batch = set(pending.sample_ids)
    sent = {int(task_id): sid for sid, task_id in recorded["tasks"].items()}
    problems: list[str] = []
    votes: dict[str, list[_Vote]] = collections.defaultdict(list)
    seen_tasks = set()
    for task in tasks:
        data = task.get("data") or {}
        task_id = int(task["id"])
        if task_id not in sent and data.get("batch") != bkey:
            continue  # another round's task
        seen_tasks.add(task_id)
        sample_id = data.get("sample_id")
        if task_id in sent and (data.get("sample_id") != sent[task_id] or data.get("batch") != bkey
                                or data.get("round") != pending.round):  # fmt: skip
            problems.append(
                f"task {task_id} of sample {short_repr(sent[task_id])} was edited in Label "
                f"Studio (its data now names sample {short_repr(str(sample_id))}, round "
                f"{data.get('round')!r}): restore it, or delete it and run `baldflow label "
                "pull --resend`"
            )
            continue
        if sample_id not in batch:
            problems.append(
                f"task {task_id} names sample {short_repr(str(sample_id))}, which is not in "
                f"round {pending.round}'s batch"
            )
            continue
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            label, problem = _chosen_label(annotation, sample_id, pending.class_names)
            if problem:
                problems.append(problem)
                continue
            user = annotation.get("completed_by")
            user_id = user.get("id") if isinstance(user, Mapping) else user
            who = printable(emails.get(int(user_id), f"user {user_id}")) if user_id else "unknown"
            votes[sample_id].append(_Vote(label, who, int(annotation["id"]), task_id))
    deleted = [sid for task_id, sid in sent.items() if task_id not in seen_tasks]
    if deleted:
        shown = ", ".join(short_repr(s, 40) for s in deleted[:10])
        problems.append(
            f"{len(deleted)} task(s) were deleted in Label Studio (samples {shown}): "
            "`baldflow label pull --resend` sends them again"
        )
    rows, decisions = [], []
    for sid in pending.sample_ids:
        if not votes.get(sid):
            continue
        vote, decision, problem = _settle(sid, votes[sid], pending.class_names, conflicts)
        if problem:
            problems.append(problem)
            continue
        assert vote is not None
        who = ", ".join(f"{v.who} (annotation {v.annotation_id})" for v in votes[sid])
        if decision:
            who += f": {decision}"
            decisions.append(f"sample {printable(sid)}: {decision}")
        rows.append([sid, str(vote.label), who, utc_now(),
                     f"Label Studio project {project_id} task {vote.task_id}"])  # fmt: skip
    if problems:
        raise LabelImportError(where, problems)
    result = PullResult(pending.round, project_id, len(rows), len(pending.sample_ids), decisions)
    if result.complete:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(LABELS_FIELDS)
        writer.writerows(rows)
        handoff.write_imported(pending.round, buffer.getvalue())
        fault_point("label-studio-pull:stored", pending.round)
    return result
