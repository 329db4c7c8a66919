r"""What the report page shows, gathered from a finished run as plain values.

`from_run` reads the run once it is over (trained, reported, exported and
checked) and gives a `ReportContent`: the settings that matter, the data, the
evaluation history of training and fine-tuning, the evaluation reports of the
validation and test sets, the misclassified images as small JPEGs, the
exported files' table and the time by phase. report_page turns it into the
report folder; nothing there needs TensorFlow or the run again, so the page
can be tested on a hand-made ReportContent.

The images shown are the evaluated set's mistakes (the test set, or the
validation set when there are no test images): at most MAX_THUMBNAILS,
chosen by evaluation_pictures.mistakes_to_show (every true class in turn, the
most confident mistakes first), decoded again through the run's image source
and the one preprocessing function (evaluation_pictures.load_display_images),
so each is the picture the module saw.
"""

import dataclasses
import io
from typing import Optional

import numpy as np
from PIL import Image

from retrain_suite import dataset as dataset_lib
from retrain_suite import evaluation_pictures, tuning

MAX_THUMBNAILS = 48  # misclassified images shown
THUMBNAIL_SIZE = 128  # pixels, the longer side of a thumbnail at most
JPEG_QUALITY = 85

# Shown whatever their value; any other flag is shown when it differs from its default.
ALWAYS_SHOWN = ("image_dir", "tfrecord_dir", "tfhub_module", "validation_percentage",
                "testing_percentage", "how_many_training_steps", "learning_rate", "optimizer",
                "train_batch_size", "eval_step_interval", "random_seed")


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """One misclassified image, small."""

    path: str  # relative to the image folder (or the TFRecord's name for it)
    true_label: str
    predicted_label: str
    confidence: float  # the probability given to the predicted (wrong) class, in [0, 1]
    jpeg: bytes  # the image as the module saw it, at most THUMBNAIL_SIZE pixels a side


@dataclasses.dataclass(frozen=True)
class ReportContent:
    """Everything on the report page, as plain values (no TensorFlow, no run)."""

    settings: tuple  # ((flag name, value as text), ...) in the flags' order
    module: str  # --tfhub_module
    module_shape: str  # e.g. "input 299 x 299 pixels, 2048 features per image"
    labels: tuple  # class names, in label order
    counts: dict  # {label: {split: images}}, dataset.counts_by_class'
    copies: str  # dataset.format_copies' text
    # {"training": [training.EvaluationPoint], "fine-tuning": [...]}: a phase that did
    # not run is absent.
    history: dict
    outcome: tuple  # ((what, value as text), ...): steps trained, kept step, ...
    # {split: evaluation report, reporting.evaluation_reports'}, "validation" and
    # "testing" where the run evaluated them.
    evaluations: dict
    thumbnails: tuple = ()  # (Thumbnail, ...), grouped by true class, worst first
    # (set name, [artifact_check.ArtifactResult]), or None when nothing was checked.
    artifacts: Optional[tuple] = None
    phases: tuple = ()  # ((phase name, seconds), ...), in order
    # Tuning's trials: (tuning.COLUMNS, row, ...), each row text cells, the chosen
    # trial's first cell marked " *"; () without tuning.
    tuning_table: tuple = ()
    tuning_choice: str = ""  # the log's line saying what tuning chose and why
    total_seconds: Optional[float] = None  # the run's time so far, start-up included
    # A --multi_label run: its evaluations are multi_label.metrics reports, its
    # artifacts multi_label.artifacts' results, its curves' "accuracy" the validation mAP.
    multi_label: bool = False

    @property
    def evaluated_set(self):
        """The split whose mistakes and confusion matrices are shown: "testing", else
        "validation", or None when neither was evaluated."""
        return next((s for s in ("testing", "validation") if s in self.evaluations), None)


def settings_of(config):
    """The flags that matter, ((name, value text), ...): ALWAYS_SHOWN (unless empty:
    --tfrecord_dir of a run from --image_dir) and every flag whose value is not its
    default, in config's section and field order."""
    rows = []
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if (field.name in ALWAYS_SHOWN and value != "") or value != field.default:
                rows.append((field.name, _flag_text(value)))
    return tuple(rows)


def _flag_text(value):
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def thumbnail_jpeg(pixels, size=THUMBNAIL_SIZE):
    """uint8 [H, W, 3] -> JPEG bytes, shrunk to at most size pixels a side (never enlarged:
    the page scales small ones up without smoothing)."""
    image = Image.fromarray(np.asarray(pixels, np.uint8))
    if max(image.size) > size:
        image.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def grouped_worst_first(thumbnails):
    """Thumbnails grouped by true class: the class with the most confident mistake
    first, and within a class the most confident first."""
    groups = {}
    for t in sorted(thumbnails, key=lambda t: -t.confidence):
        groups.setdefault(t.true_label, []).append(t)
    return tuple(t for group in groups.values() for t in group)


def thumbnails_of(run, report, split_name, count=MAX_THUMBNAILS):
    """The misclassified images of report (an evaluation report of split_name, with
    its "misclassified" list) as Thumbnails, decoded from run (a
    run_data.PreparedRun). Images that cannot be decoded again are left out."""
    mistakes = evaluation_pictures.mistakes_to_show(report["misclassified"], run.class_names,
                                                    count)
    split = run.split(split_name)
    row_of = {image.path: row for image, row in zip(split.images, split.rows.tolist())}
    rows = [row_of[m["image"]] for m in mistakes]
    pixels = evaluation_pictures.load_display_images(run, rows)
    return grouped_worst_first(
        Thumbnail(m["image"], m["true"], m["predicted"], float(m["confidence"]),
                  thumbnail_jpeg(pixels[row]))
        for row, m in zip(rows, mistakes) if row in pixels)


def outcome_of(model, report):
    """((what, value text), ...): what training settled, for the page's summary."""
    rows = []
    for split, name in (("testing", "test accuracy"), ("validation", "validation accuracy")):
        evaluated = report.get(split)
        if evaluated and evaluated["accuracy"] is not None:
            rows.append((name, f"{100 * evaluated['accuracy']:.1f}% (N={evaluated['count']})"))
    result = model.result
    rows.append(("training steps", f"{result.steps} (the layer of step {result.kept_step} kept)"))
    if model.tuned is not None:
        tuned = model.tuned
        kept = ("the bottleneck-trained model kept" if not tuned.kept_step
                else f"the model of step {tuned.kept_step} kept")
        rows.append(("fine-tuning steps",
                     f"{tuned.steps} ({kept}{'; diverged' if tuned.diverged else ''})"))
    return tuple(rows)


def from_run(config, run, model, report, checked, timer):
    """The ReportContent of a finished run.

    config: the run's config.RetrainConfig (its seed set); run: the
    run_data.PreparedRun; model: the run_data.TrainedModel; report: the dict
    job.report_results wrote (evaluation reports under "testing" and
    "validation"); checked: artifact_check.check_run's (set name,
    [ArtifactResult]) or None; timer: the run's phases.PhaseTimer.
    """
    evaluations = {split: report[split] for split in ("validation", "testing")
                   if report.get(split) is not None}
    history = {"training": list(model.result.history)}
    if model.tuned is not None:
        history["fine-tuning"] = list(model.tuned.history)
    content = ReportContent(
        settings=settings_of(config),
        module=config.module.tfhub_module,
        module_shape=(f"input {run.input_size[0]} x {run.input_size[1]} pixels, "
                      f"{run.dimension} features per image"),
        labels=tuple(run.class_names),
        counts=dataset_lib.counts_by_class(run.dataset),
        copies=dataset_lib.format_copies(dataset_lib.find_copies(
            run.dataset.images, [run.contents.get(i.path) for i in run.dataset.images])),
        history=history,
        outcome=outcome_of(model, report),
        evaluations=evaluations,
        artifacts=checked,
        phases=tuple(timer.phases),
        total_seconds=timer.total(),
    )
    if model.search is not None:
        content = dataclasses.replace(
            content, tuning_table=(tuning.COLUMNS, *tuning.table_rows(model.search)),
            tuning_choice=tuning.choice_line(model.search))
    shown = content.evaluated_set
    if shown is None or not evaluations[shown]["misclassified"]:
        return content
    return dataclasses.replace(content,
                               thumbnails=thumbnails_of(run, evaluations[shown], shown))


def from_multi_label_run(config, run, result, report, checked, timer):
    """The ReportContent of a finished --multi_label run: arguments as from_run's, with
    result a multi_label.training.MultiLabelResult, report multi_label.stages' and
    checked multi_label.artifacts.check_run's."""
    evaluations = {split: report[split] for split in ("validation", "testing")
                   if report.get(split) is not None}
    outcome = [(f"{'test' if split == 'testing' else 'validation'} {name}",
                f"{100 * evaluations[split][key]:.1f}% (N={evaluations[split]['count']})")
               for split in ("testing", "validation") if split in evaluations
               for name, key in (("mAP", "mean_average_precision"), ("exact match", "exact_match"))
               if evaluations[split][key] is not None]
    outcome.append(("training steps", f"{result.steps} (the layer of step {result.kept_step} "
                                      "kept)"))
    outcome.append(("thresholds", report["threshold_rule"]))
    return ReportContent(
        settings=settings_of(config), module=config.module.tfhub_module,
        module_shape=(f"input {run.input_size[0]} x {run.input_size[1]} pixels, "
                      f"{run.dimension} features per image"),
        labels=tuple(run.class_names), counts=dataset_lib.counts_by_class(run.dataset),
        copies=f"{len(run.dataset.images)} distinct photos (copies are one photo).",
        history={"training": list(result.history)}, outcome=tuple(outcome),
        evaluations=evaluations, artifacts=checked, phases=tuple(timer.phases),
        total_seconds=timer.total(), multi_label=True,
    )
