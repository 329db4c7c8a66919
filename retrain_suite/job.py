"""The whole retraining run from a config.RetrainConfig, in order.

check the configuration -> scan (or read TFRecords) and split -> compute or
reuse bottlenecks -> train the final layer (-> fine-tune the module with it
on images, keeping the better) -> report on the test and
validation sets -> export the frozen graph, labels (and SavedModel, and
TFLite model) -> run each exported file on the test set (artifact_check). See
retrain.py's docstring for what each step means to the user.
"""

import contextlib
import dataclasses
import os
import random

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import (
    artifact_check,
    atomic_files,
    evaluation,
    export,
    final_layer,
    fine_tuning,
    input_pipeline,
    memory_budget,
    output_paths,
    reporting,
    tflite,
    tfrecords,
    training,
)
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib


def check_sets(dataset, config):
    """Raise UsageError when a flag needs validation or test images the dataset lacks."""
    has_validation = bool(dataset.in_split("validation"))
    if config.training.early_stopping_patience and not has_validation:
        raise config_lib.UsageError(
            "--early_stopping_patience needs validation images; raise "
            "--validation_percentage or drop the flag."
        )
    if config.fine_tuning.fine_tune_steps and not has_validation:
        raise config_lib.UsageError(
            "--fine_tune_steps needs validation images: fine-tuning is checked against the "
            "bottleneck-trained model on them so that it never makes the classifier worse; "
            "raise --validation_percentage or drop the flag."
        )
    if (config.evaluation.assert_accuracy_at_least is not None and not has_validation
            and not dataset.in_split("testing")):
        raise config_lib.UsageError(
            "--assert_accuracy_at_least needs test or validation images; raise "
            "--testing_percentage or drop the flag."
        )


def check_memory(config, dimension, class_count, image_count, input_size):
    """Raise memory_budget.TooBig when the sizes asked for need more memory than this
    machine has (what is counted: memory_budget.estimate).

    dimension: bottleneck size D; input_size: (height, width) of the module.
    """
    sizes = memory_budget.Sizes(
        image_count=image_count, input_size=input_size,
        bottleneck_batch_size=config.module.bottleneck_batch_size, dimension=dimension,
        class_count=class_count, train_batch_size=config.training.train_batch_size,
        hidden_units=config.training.hidden_units,
        distorted=config_lib.distortions_from(config).any(),
        fine_tune_batch_size=config.fine_tuning.fine_tune_batch_size
        if config.fine_tuning.fine_tune_steps else 0,
    )
    estimate = memory_budget.estimate(sizes)
    missing = memory_budget.shortfall(estimate.needed)
    if missing:
        raise memory_budget.TooBig(
            f"--{estimate.largest}={getattr(sizes, estimate.largest)} needs {missing} "
            f"({dimension}-value bottlenecks, "
            f"{class_count} classes, {image_count} images). Lower it."
        )


def check_names_in_graphs(config):
    """Build the training and export graphs without training. -> (D, (height, width)).

    Raises UsageError when --final_tensor_name is already taken in either (by
    the module, `Placeholder`, an input of the training graph, ...).
    """
    name = config.outputs.final_tensor_name
    try:
        final_layer.build_training_graph(
            1, 2, name, config.training.optimizer, 0.1, 1, 0, hidden_units=config.training.hidden_units,
            dropout=config.training.dropout > 0,
        )
        dimension, input_size = export.check_final_tensor_name(
            config.module.tfhub_module, config.module.image_size, name, config.training.hidden_units
        )
    except ValueError as e:
        raise config_lib.UsageError(
            f"--final_tensor_name={name}: {e}; choose another name, e.g. final_result."
        ) from e
    return dimension, input_size


def split_arrays(dataset, bottlenecks, row_of):
    """{split: (vectors float32 [n, D], labels int64 [n], images)} for the three sets."""
    arrays = {}
    for split in dataset_lib.SPLITS:
        # A canonical order: the same images give the same arrays, and so the same
        # training, whether they came from a folder or from TFRecords.
        images = sorted(dataset.in_split(split), key=lambda i: (i.label_index, i.path))
        rows = [row_of[image.path] for image in images]
        arrays[split] = (
            bottlenecks.vectors[rows].reshape(len(rows), bottlenecks.vectors.shape[1]),
            np.array([image.label_index for image in images], np.int64),
            images,
        )
    return arrays


def run_retraining(config):
    """The whole job from a config.RetrainConfig. -> final test accuracy or None.

    Raises AccuracyError, before anything is exported, when
    config.evaluation.assert_accuracy_at_least is set and not met.
    """
    config.validate()
    output_paths.check_output_paths(config.data, config.module, config.outputs,
                                    config.evaluation.eval_report)
    return retrain_with_checked_flags(config)


@contextlib.contextmanager
def checkpoint_lock(checkpoint):
    """Hold <checkpoint>.lock for the block, or raise UsageError if another run holds it."""
    if not output_paths.is_local(checkpoint):
        yield  # A remote filesystem has no fcntl locks.
        return
    try:
        with atomic_files.exclusive_lock(checkpoint + ".lock"):
            yield
    except atomic_files.Locked as e:  # Raised on entering only: the block never raises it.
        holder = f" (pid {e})" if str(e) else ""
        raise config_lib.UsageError(
            f"--checkpoint_path={checkpoint} is in use by another retrain.py run{holder}; "
            "wait for it to finish or give this run its own --checkpoint_path."
        ) from None
    except atomic_files.LockFileError as e:  # Also raised on entering only.
        raise config_lib.UsageError(
            f"--checkpoint_path={checkpoint}: {e} (it is left alone), or give this run "
            "another --checkpoint_path."
        ) from None


def retrain_with_checked_flags(config):
    """run_retraining after the flag and path checks: scan, check, then train holding
    the checkpoint's lock."""
    if config.training.class_weighting == "balanced" and config.training.sampling == "uniform":
        logging.warning(
            "--class_weighting=balanced with --sampling=uniform corrects for class sizes "
            "twice: small classes end up counting more than large ones. Use one of them."
        )
    if config.data.tfrecord_dir:
        dataset, images = tfrecords.read_tfrecords(config.data.tfrecord_dir)
    else:
        dataset = dataset_lib.build_dataset(
            config.data.image_dir, config.data.validation_percentage,
            config.data.testing_percentage, exclude_dirs=[config.module.bottleneck_dir],
            split_by=config.data.split_by,
        )
        images = input_pipeline.ImageFiles(dataset.full_path(image) for image in dataset.images)
    logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
    check_sets(dataset, config)
    outputs = [path for _, path in output_paths.outputs_of(config.outputs, config.evaluation.eval_report)]
    output_paths.check_output_locations(outputs + [os.path.join(config.module.bottleneck_dir, "x")])
    dimension, input_size = check_names_in_graphs(config)
    if config.fine_tuning.fine_tune_steps:
        module_lib.check_fine_tunable(config.module.tfhub_module, config.module.image_size)
    check_memory(config, dimension, len(dataset.labels), len(dataset.images), input_size)
    with checkpoint_lock(config.outputs.checkpoint_path):
        return train_and_export(config, dataset, images)


def train_and_export(config, dataset, images):
    """Bottlenecks, training, evaluation and export, once every check has passed."""
    if config.training.random_seed is None:
        config = config.with_seed(random.SystemRandom().randrange(2**31))
        logging.info("Random seed %d (pass --random_seed=%d to repeat this run).",
                     config.training.random_seed, config.training.random_seed)
    precision = module_lib.mixed_precision_type() if config.module.mixed_precision else "float32"
    bottlenecks = compute.compute_bottlenecks(
        images, config.module.tfhub_module, config.module.bottleneck_dir,
        config.module.image_size, config.module.bottleneck_batch_size, config.data.max_image_pixels,
        precision=precision,
    )
    row_of = {image.path: n for n, image in enumerate(dataset.images)}
    if bottlenecks.skipped:
        dataset = dataset.without(dataset.images[i].path for i in bottlenecks.skipped)
        check_sets(dataset, config)
    log_copies(dataset, [bottlenecks.contents[row_of[i.path]] for i in dataset.images])
    # Past dataset_lib.MAX_CLASSES_LISTED classes the log shows the smallest; the
    # report's images_per_class holds every class.
    full_counts = ("every class's counts are in the --eval_report JSON"
                   if config.evaluation.eval_report else "--eval_report writes every class's counts")
    dataset_lib.warn_about_small_classes(dataset, full_counts)
    if not dataset.in_split("training"):
        raise config_lib.UsageError("No training images left; lower the validation and testing percentages.")
    logging.info("Images per class and set:\n%s", dataset_lib.format_count_table(dataset, (), full_counts))
    arrays = split_arrays(dataset, bottlenecks, row_of)

    def export_graph(flag, path, layer, module_values=None):
        graph_def = export.frozen_graph(
            config.module.tfhub_module, config.module.image_size, len(dataset.labels),
            layer, config.outputs.final_tensor_name, hidden_units=config.training.hidden_units,
            module_values=module_values,
        )
        export.write_output(flag, path, lambda: export.write_frozen_graph(graph_def, path))
        return graph_def

    def export_intermediate(step, layer):
        folder = config.outputs.intermediate_output_graphs_dir
        path = os.path.join(folder, f"intermediate_{step}.pb")
        export_graph("intermediate_output_graphs_dir", path, layer)
        logging.info("Wrote intermediate graph %s", path)

    distortions = config_lib.distortions_from(config)
    batch_source = None
    if distortions.any():
        batch_source = distorted_batch_source(
            images, [row_of[i.path] for i in arrays["training"][2]], arrays["training"][1],
            config, distortions,
        )
    result = training.train(arrays, len(dataset.labels), config, export_intermediate, batch_source)
    tuned = None
    if config.fine_tuning.fine_tune_steps:
        tuned = fine_tuning.fine_tune(
            config, dataset.labels, arrays, images, row_of,
            {i.path: bottlenecks.contents[row_of[i.path]] for i in dataset.images}, result,
            training.loss_settings(config, arrays["training"][1], len(dataset.labels)),
        )
        # What is reported, checked and exported from here on is the kept whole model,
        # measured on images: the cached bottlenecks no longer describe a tuned module.
        result = dataclasses.replace(result, layer=tuned.layer, predictions=tuned.predictions,
                                     confidences=tuned.confidences)
    accuracy = reporting.report_test_results(
        arrays, dataset.labels, result, config.evaluation.print_misclassified_test_images
    )
    reports = reporting.evaluation_reports(arrays, dataset.labels, result)
    reporting.log_reports(reports, dataset.labels)
    reporting.write_evaluation_summaries(
        dataset, reports, config, result.steps, images, row_of, bottlenecks
    )
    report = {
        "labels": dataset.labels,
        "steps_trained": result.steps,
        "kept_step": result.kept_step,
        "images_per_class": [{"label": label, **by_split}
                             for label, by_split in dataset_lib.counts_by_class(dataset).items()],
        "testing": reports.get("testing"),
        "validation": reports.get("validation"),
    }
    if tuned is not None:
        report["fine_tuning"] = {"steps_trained": tuned.steps, "kept_step": tuned.kept_step,
                                 "diverged": tuned.diverged}
    if config.evaluation.eval_report:
        export.write_output("eval_report", config.evaluation.eval_report,
                            lambda: evaluation.write_report(config.evaluation.eval_report, report))
        logging.info("Wrote evaluation report %s", config.evaluation.eval_report)
    if config.evaluation.assert_accuracy_at_least is not None:
        reporting.check_accuracy(reports, config.evaluation.assert_accuracy_at_least)
    graph_def = export_graph("output_graph", config.outputs.output_graph, result.layer,
                             tuned.module_values if tuned is not None else None)
    export.write_output("output_labels", config.outputs.output_labels,
                 lambda: export.write_labels(dataset.labels, config.outputs.output_labels))
    logging.info("Wrote %s and %s", config.outputs.output_graph, config.outputs.output_labels)
    if config.outputs.saved_model_dir:
        export.write_output(
            "saved_model_dir", config.outputs.saved_model_dir,
            lambda: export.write_saved_model(
                graph_def, config.outputs.final_tensor_name, config.outputs.saved_model_dir),
        )
        logging.info("Wrote SavedModel %s", config.outputs.saved_model_dir)
    if config.outputs.tflite_output_file:
        calibrated = export.write_output(
            "tflite_output_file", config.outputs.tflite_output_file,
            lambda: tflite.export_for_run(
                config, graph_def, dataset.labels, images,
                [row_of[i.path] for i in arrays["training"][2]], bottlenecks.height, bottlenecks.width,
            ),
        )
        logging.info("Wrote TFLite model %s (quantization %s%s)", config.outputs.tflite_output_file,
                     config.outputs.tflite_quantization,
                     f", calibrated on {calibrated} training images" if calibrated else "")
    checked = artifact_check.check_run(
        config, arrays, result, images, row_of, bottlenecks.height, bottlenecks.width,
    )
    if checked:
        set_name, artifacts = checked
        logging.info("Exported files on the %s set:\n%s", set_name,
                     artifact_check.format_table(artifacts, set_name))
        if config.evaluation.eval_report:
            report["artifacts"] = {"set": set_name, "files": [a.as_dict() for a in artifacts]}
            export.write_output("eval_report", config.evaluation.eval_report,
                                lambda: evaluation.write_report(config.evaluation.eval_report, report))
        if config.evaluation.assert_accuracy_at_least is not None:
            artifact_check.check_accuracy(
                artifacts, config.evaluation.assert_accuracy_at_least, set_name
            )
    return accuracy


def log_copies(dataset, contents):
    """Log the copies report; a warning when copies cross sets or classes."""
    copies = dataset_lib.find_copies(dataset.images, contents)
    log = logging.warning if copies.across_sets or copies.across_classes else logging.info
    log("%s", dataset_lib.format_copies(copies))


def distorted_batch_source(images, indices, labels, config, distortions):
    """A batch_source for final_layer.build_training_graph: distorted images through the module."""

    def build():
        module = module_lib.load(config.module.tfhub_module, config.module.image_size)
        batches = input_pipeline.distorted_batches(
            images, indices, labels.tolist(),
            module.height, module.width, config.training.train_batch_size, distortions,
            config.training.random_seed, config.data.max_image_pixels,
        )
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        pixels, batch_labels = iterator.get_next()
        return module(pixels), batch_labels, iterator.initializer

    return build
