"""From the kept layer's predictions to what the user reads: the final test accuracy,
the evaluation tables, the TensorBoard pictures and the accuracy gate.

`evaluation` computes the metrics and draws the pictures; this module applies
them to a run's sets and writes them where the run's configuration says.
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import errors, evaluation


class AccuracyError(errors.SuiteError):
    """The trained classifier is less accurate than --assert_accuracy_at_least."""

    area = "accuracy"


def report_test_results(arrays, labels, result, list_misclassified):
    """Log the final test accuracy (and the wrong images). -> accuracy or None."""
    if "testing" not in result.predictions:
        logging.info("No testing images: final test accuracy is skipped.")
        return None
    rows, predictions = result.predictions["testing"]
    _, test_y, images = arrays["testing"]
    truth = test_y[rows]
    accuracy = float(np.mean(predictions == truth))
    logging.info("Final test accuracy = %.1f%% (N=%d)", 100 * accuracy, len(rows))
    if list_misclassified:
        wrong = [(images[r], p) for r, p, t in zip(rows, predictions, truth) if p != t]
        logging.info("=== MISCLASSIFIED TEST IMAGES (%d) ===", len(wrong))
        for image, predicted in wrong:
            logging.info("%s  true: %s  predicted: %s", image.path, image.label, labels[predicted])
    return accuracy


SET_NAMES = {"testing": "Test", "validation": "Validation"}


def evaluation_reports(arrays, labels, result):
    """{split: evaluation report} for the evaluated sets, with the wrong images listed.

    Each wrong image: {"image": relative path, "true": label, "predicted": label,
    "confidence": the probability the layer gave the predicted (wrong) class}.
    """
    reports = {}
    for split, (rows, predictions) in result.predictions.items():
        _, y, images = arrays[split]
        confidences = result.confidences[split]
        report = evaluation.evaluate(y[rows], predictions, labels)
        report["misclassified"] = [
            {"image": images[r].path, "true": images[r].label, "predicted": labels[p],
             "confidence": round(float(confidences[n]), 6)}
            for n, (r, p) in enumerate(zip(rows, predictions)) if p != y[r]
        ]
        reports[split] = report
    return reports


def log_reports(reports, labels):
    for split in ("validation", "testing"):
        if split in reports:
            logging.info("%s", evaluation.format_report(SET_NAMES[split], reports[split], labels))


def write_evaluation_summaries(dataset, reports, config, step, images, row_of, bottlenecks):
    """TensorBoard: confusion matrix, per-class accuracy (and wrong test images) at `step`.

    The test set goes to a `test/` run with its accuracy and a grid of up to 16
    misclassified test images (evaluation.mistakes_to_show: every true class
    in turn, the most confident mistakes first) as the module saw them, decoded again from
    `images` (row_of: relative path -> index there; bottlenecks: the
    compute.Bottlenecks, for the input size). The validation
    set's confusion matrix and per-class accuracy go to the `validation/` run
    (its accuracy curve is already there).

    These pictures come after training, before export: a run that cannot write
    them (a full disk, a file where the run's folder belongs, a picture that
    cannot be drawn) logs a warning and goes on to export what it trained.
    """
    for split, run in (("testing", "test"), ("validation", "validation")):
        if split not in reports:
            continue
        folder = os.path.join(config.outputs.summaries_dir, run)
        try:
            summary = _evaluation_summary(dataset, reports[split], split, config, step, images,
                                          row_of, bottlenecks)
            _write_summary(folder, summary, step)
        except (OSError, tf.errors.OpError) as e:
            logging.warning("Could not write the %s set's TensorBoard evaluation to %s (%s); "
                            "the run goes on without it.", split, folder, e)


def _evaluation_summary(dataset, report, split, config, step, images, row_of, bottlenecks):
    grid = None
    if split == "testing" and report["misclassified"]:
        shown = evaluation.mistakes_to_show(report["misclassified"], dataset.labels)
        indices = [row_of[m["image"]] for m in shown]
        pixels = evaluation.load_display_images(
            images, indices, bottlenecks.height, bottlenecks.width,
            config.data.max_image_pixels,
        )
        kept = [(i, m) for i, m in zip(indices, shown) if i in pixels]
        if kept:
            grid = evaluation.misclassified_grid_png(
                [pixels[i] for i, _ in kept],
                [(m["true"], f"{m['predicted']} ({100 * m['confidence']:.0f}%)") for _, m in kept],
            )
    return evaluation.evaluation_summary(
        report, dataset.labels, grid, with_accuracy=split == "testing",
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
