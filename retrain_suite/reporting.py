"""From the kept layer's predictions to what the user reads: the final test accuracy,
the evaluation tables, the TensorBoard pictures and the accuracy gate.

`evaluation` computes the metrics and draws the pictures; this module applies
them to a run's sets and writes them where the run's configuration says.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import errors, evaluation, evaluation_pictures


class AccuracyError(errors.SuiteError):
    """The trained classifier is less accurate than --assert_accuracy_at_least."""

    area = "accuracy"


def report_test_results(run, result, list_misclassified):
    """Log the final test accuracy (and the wrong images) of result (a
    training.TrainingResult) on run's test set. -> accuracy or None."""
    if "testing" not in result.predictions:
        logging.info("No testing images: final test accuracy is skipped.")
        return None
    predicted = result.predictions["testing"]
    truth = predicted.truth(run.testing)
    accuracy = float(np.mean(predicted.classes == truth))
    logging.info("Final test accuracy = %.1f%% (N=%d)", 100 * accuracy, len(truth))
    if list_misclassified:
        wrong = [(run.testing.images[n], p) for n, p, t in
                 zip(predicted.positions, predicted.classes, truth) if p != t]
        logging.info("=== MISCLASSIFIED TEST IMAGES (%d) ===", len(wrong))
        for image, predicted_class in wrong:
            logging.info("%s  true: %s  predicted: %s", image.path, image.label,
                         run.class_names[predicted_class])
    return accuracy


SET_NAMES = {"testing": "Test", "validation": "Validation"}


def evaluation_reports(run, result):
    """{split: evaluation report} for the sets result evaluated, with the wrong images listed.

    Each wrong image: {"image": relative path, "true": label, "predicted": label,
    "confidence": the probability the layer gave the predicted (wrong) class}.
    """
    reports = {}
    labels = run.class_names
    for name, predicted in result.predictions.items():
        split = run.split(name)
        truth = predicted.truth(split)
        report = evaluation.evaluate(truth, predicted.classes, labels)
        report["misclassified"] = [
            {"image": split.images[n].path, "true": split.images[n].label, "predicted": labels[p],
             "confidence": round(float(confidence), 6)}
            for n, p, t, confidence in zip(predicted.positions, predicted.classes, truth,
                                           predicted.confidences) if p != t
        ]
        reports[name] = report
    return reports


def log_reports(reports, labels):
    for split in ("validation", "testing"):
        if split in reports:
            logging.info("%s", evaluation.format_report(SET_NAMES[split], reports[split], labels))


def write_evaluation_summaries(run, reports, summaries_dir, step):
    """TensorBoard: confusion matrix, per-class accuracy (and wrong test images) at `step`.

    run: the run_data.PreparedRun; reports: evaluation_reports' result. The
    test set goes to a `test/` run of summaries_dir with its accuracy and a
    grid of up to 16 misclassified test images (evaluation_pictures.mistakes_to_show:
    every true class in turn, the most confident mistakes first) as the module
    saw them (run.displayed: kept as the check of the exported files decoded them, or
    decoded again from the run's images). The validation set's
    confusion matrix and per-class accuracy go to the `validation/` run (its
    accuracy curve is already there).

    These pictures come after the exported files' check: a run that cannot write
    them (a full disk, a file where the run's folder belongs, a picture that
    cannot be drawn) logs a warning and goes on.
    """
    for split, tensorboard_run in (("testing", "test"), ("validation", "validation")):
        if split not in reports:
            continue
        folder = os.path.join(summaries_dir, tensorboard_run)
        try:
            summary = _evaluation_summary(run, reports[split], split, step)
            _write_summary(folder, summary, step)
        except (OSError, tf.errors.OpError) as e:
            logging.warning("Could not write the %s set's TensorBoard evaluation to %s (%s); "
                            "the run goes on without it.", split, folder, e)


def shown_rows(run, report, split, count=evaluation_pictures.MAX_MISCLASSIFIED_SHOWN):
    """Rows of run's source of the mistakes of report (split's evaluation report, or
    None) that pictures show: mistakes_to_show's, at most `count`."""
    if not report or not report["misclassified"]:
        return []
    shown = evaluation_pictures.mistakes_to_show(report["misclassified"], run.class_names, count)
    split = run.split(split)
    row_of = {image.path: row for image, row in zip(split.images, split.rows.tolist())}
    return [row_of[m["image"]] for m in shown]


def _evaluation_summary(run, report, split, step):
    grid = None
    if split == "testing" and report["misclassified"]:
        shown = evaluation_pictures.mistakes_to_show(report["misclassified"], run.class_names)
        indices = shown_rows(run, report, split)
        pixels = evaluation_pictures.load_display_images(run, indices)
        kept = [(i, m) for i, m in zip(indices, shown) if i in pixels]
        if kept:
            grid = evaluation_pictures.misclassified_grid_png(
                [pixels[i] for i, _ in kept],
                [(m["true"], f"{m['predicted']} ({100 * m['confidence']:.0f}%)") for _, m in kept],
            )
    return evaluation_pictures.evaluation_summary(
        report, run.class_names, grid, with_accuracy=split == "testing",
        title=f"{SET_NAMES[split]} set, step {step}: confusion matrix (N={report['count']})",
    )


def _write_summary(folder, summary, step):
    with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
        # Event files are named by the second they were opened in; the suffix keeps
        # this one from overwriting the training loop's file of the same second.
        writer = tf.compat.v1.summary.FileWriter(folder, filename_suffix=".evaluation")
        writer.add_summary(summary, step)
        writer.close()


def check_accuracy(reports, threshold):
    """Raise AccuracyError when the test accuracy (else validation's) is below threshold."""
    split = "testing" if "testing" in reports else "validation"
    report = reports[split]
    if report["accuracy"] < threshold:
        raise AccuracyError(
            f"{SET_NAMES[split].lower()} accuracy {100 * report['accuracy']:.1f}% "
            f"(N={report['count']}) is below --assert_accuracy_at_least={threshold:g} "
            f"({100 * threshold:.1f}%); nothing was exported."
        )
    logging.info("%s accuracy %.1f%% meets --assert_accuracy_at_least=%g.",
                 SET_NAMES[split], 100 * report["accuracy"], threshold)
