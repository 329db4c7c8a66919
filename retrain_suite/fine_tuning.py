r"""Fine-tuning: after the final layer has trained on bottlenecks, train the module too.

Transfer learning trains only the new layer, on features the frozen module
computed once (the bottleneck cache). Fine-tuning then continues for
--fine_tune_steps steps on images: each step decodes (and distorts, with the
distortion flags) --fine_tune_batch_size training images through the shared
preprocessing function, runs them through the module and the layer, and
updates the module's trainable variables (TF Hub's Reusable SavedModel API)
and the layer's, nothing else. The loss is the final layer's training loss
(class weights, label smoothing, L2) plus the module's own regularization
losses.

It is easy to make a classifier worse this way (a learning rate too high
destroys the module's features in a few steps), so the run never hands back
a worse one than it started from: the whole model is evaluated on every
validation image at step 0 (the bottleneck-trained model) and every
--fine_tune_eval_interval steps, and with --keep_best the best of these
(scored as training.BestLayer scores: whole-validation accuracy, ties by lower
cross entropy) is kept. A step whose loss is not finite ends fine-tuning, and
the best evaluated model (at worst the bottleneck-trained one) is kept.

Each evaluation also writes the fine-tuning checkpoint,
<--checkpoint_path>.fine_tuning: every variable of the graph (module, layer,
optimizer slots, step) and the best model so far, written whole under a
temporary name and renamed. A run with the same flags and data resumes from
it; batches are a function of (seed, step) (image_pipelines.fine_tuning_batches),
so the result is the one an uninterrupted run gives. A checkpoint of another
configuration or dataset is ignored, with a warning.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import time
import zipfile

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files, errors, export, final_layer
from retrain_suite import config as config_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines

# Written next to --checkpoint_path, under its lock.
CHECKPOINT_SUFFIX = ".fine_tuning"


# The TensorBoard run (a folder of --summaries_dir) of the fine-tuning curves.
TENSORBOARD_RUN = "fine_tuning"


def checkpoint_file(checkpoint_path):
    return checkpoint_path + CHECKPOINT_SUFFIX


@dataclasses.dataclass
class FineTuningResult:
    steps: int  # fine-tuning steps taken
    kept_step: int  # 0: the bottleneck-trained model was kept
    diverged: bool  # a step's loss (or an evaluation's cross entropy) was not finite
    layer: dict  # {variable name: ndarray}: the kept final layer
    # [ndarray] in the module's `variables` order (export.frozen_graph), or None
    # when the kept model is the bottleneck-trained one (the module unchanged).
    module_values: list
    # As training.TrainingResult's, measured by the kept whole model on images.
    predictions: dict
    confidences: dict


@dataclasses.dataclass
class FineTuningGraph:
    graph: tf.Graph
    module: module_lib.FeatureVectorModule
    iterator_init: tf.Operation
    train_step: tf.Operation
    loss: tf.Tensor
    step: tf.Variable
    evaluations: dict  # {split: (iterator initializer, (indices int64 [B], probabilities [B, C]))}
    layer_variables: list
    assign: tf.Operation  # sets every variable of `every` from `values`
    values: dict  # {variable name: placeholder}
    every: list  # every global variable of the graph: what the checkpoint holds


def build_graph(config, class_count, images, train_rows, train_y, eval_rows, first_step,
                loss_settings):
    """The fine-tuning graph: image batches -> module -> final layer -> loss -> update.

    train_rows, train_y: the training images' positions in `images` and their
    labels; eval_rows: {split: positions} of the images evaluated whole;
    first_step: the step the batches start at (image_pipelines.fine_tuning_batches).
    """
    tuning = config.fine_tuning
    seed = config.training.random_seed
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        module = module_lib.load(config.module.tfhub_module, config.module.image_size)
        spec = image_pipelines.ImageBatchSpec(
            module.height, module.width, tuning.fine_tune_batch_size,
            config_lib.distortions_from(config), seed, config.data.max_image_pixels,
        )
        batches = image_pipelines.fine_tuning_batches(images, train_rows, train_y, spec, first_step)
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        pixels, labels = iterator.get_next()
        step = tf.compat.v1.get_variable(
            "fine_tuning_steps_taken", [], tf.int64, tf.compat.v1.zeros_initializer(),
            trainable=False,
        )

        def dropout(features):  # drawn from (seed, step), as in final_layer
            return tf.nn.experimental.stateless_dropout(
                features, rate=config.training.dropout,
                seed=tf.stack([tf.constant(seed, tf.int64), step.read_value()]),
            )
        features = module(pixels, training=tuning.fine_tune_batch_norm)
        logits = final_layer.layer_logits(
            features, class_count, config.training.hidden_units,
            dropout if config.training.dropout > 0 else None,
        )
        layer_variables = final_layer.final_layer_variables(graph)
        loss = final_layer.training_loss(logits, labels, class_count, loss_settings, graph)
        regularization = module.regularization_losses()
        if regularization:
            loss = loss + tf.add_n(regularization)
        optimizer = final_layer.make_optimizer(
            tuning.fine_tune_optimizer, config_lib.fine_tune_learning_rate(config)
        )
        # Only the module's trainable variables and the layer learn.
        update = optimizer.minimize(loss, var_list=module.trainable_variables + layer_variables)
        with tf.control_dependencies([update]):
            train_step = step.assign_add(1).op
        evaluations = {}
        for split, rows in eval_rows.items():
            decoded = images.batches(rows, module.height, module.width,
                                     tuning.fine_tune_batch_size, config.data.max_image_pixels)
            eval_iterator = tf.compat.v1.data.make_initializable_iterator(decoded)
            indices, _, eval_pixels = eval_iterator.get_next()
            eval_logits = final_layer.layer_logits(
                module(eval_pixels, training=False), class_count, config.training.hidden_units
            )
            evaluations[split] = (eval_iterator.initializer, (indices, tf.nn.softmax(eval_logits)))
        every = tf.compat.v1.global_variables()
        values = {v.op.name: tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape) for v in every}
        assign = tf.group(*(v.assign(values[v.op.name]) for v in every))
    return FineTuningGraph(graph, module, iterator.initializer, train_step, loss, step, evaluations,
                  layer_variables, assign, values, every)


def _fingerprint(config, labels, arrays, contents, start_layer):
    """A hex digest of everything the fine-tuning trajectory depends on.

    contents: {image path: content SHA-1}. The layer the run starts from is in
    it too, so a checkpoint is resumed only from the same start.
    """
    settings = {
        section: dataclasses.asdict(getattr(config, section))
        for section in ("training", "fine_tuning", "distortions")
    }
    settings["module"] = cache_lib.module_key(
        config.module.tfhub_module, config.module.image_size, config.module.image_size
    )
    settings["max_image_pixels"] = config.data.max_image_pixels
    digest = hashlib.sha1(json.dumps(
        {"settings": settings, "labels": labels,
         "images": {split: [(i.path, i.label_index, contents[i.path]) for i in arrays[split][2]]
                    for split in ("training", "validation")}},
        sort_keys=True, default=str,
    ).encode("utf-8"))
    for name in sorted(start_layer):
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(start_layer[name]).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class _Best:
    """The best evaluation so far; values None while it is the start (step 0)."""

    step: int = 0
    accuracy: float = -1.0
    cross_entropy: float = math.inf
    values: dict = None
    evaluations_without_improvement: int = 0

    def better(self, accuracy, cross_entropy):
        return (accuracy, -cross_entropy) > (self.accuracy, -self.cross_entropy)


# What _write_checkpoint puts in the checkpoint's meta, and the types read back.
CHECKPOINT_META = {"fingerprint": str, "step": int, "best_step": int,
                   "best_accuracy": (int, float), "best_cross_entropy": (int, float),
                   "evaluations_without_improvement": int, "start_score": list}


def _read_checkpoint(path, fingerprint):
    """-> (step, current values {name: ndarray}, _Best, start score) or None, logged.

    A checkpoint that cannot be read (not a regular file, not the zip
    _write_checkpoint writes, its meta not the one CHECKPOINT_META describes)
    is ignored with a warning, like one of another run: fine-tuning starts
    from step 0 and writes its own in its place.
    """
    if not tf.io.gfile.exists(path):
        return None
    # Read like an image: a FIFO or device put there is refused, never waited on.
    data, problem = image_files.read_regular_file(path)
    try:
        if problem:
            raise ValueError(problem)
        _check_stored_uncompressed(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = _checked_meta(json.loads(str(stored["meta"])))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
        logging.warning("Ignoring the fine-tuning checkpoint %s: it cannot be read (%s); "
                        "fine-tuning starts from step 0.", path, errors.one_line(e))
        return None
    if meta["fingerprint"] != fingerprint:
        logging.warning(
            "Ignoring the fine-tuning checkpoint %s: it was written by a run with other flags, "
            "data or starting layer; fine-tuning starts from step 0 and replaces it.", path)
        return None
    current = {n[len("current/"):]: v for n, v in arrays.items() if n.startswith("current/")}
    best_values = {n[len("best/"):]: v for n, v in arrays.items() if n.startswith("best/")}
    best = _Best(meta["best_step"], meta["best_accuracy"], meta["best_cross_entropy"],
                 best_values or None, meta["evaluations_without_improvement"])
    logging.info("Resuming fine-tuning from step %d (checkpoint %s).", meta["step"], path)
    return meta["step"], current, best, tuple(meta["start_score"])


def _check_stored_uncompressed(data):
    """ValueError unless every member of the zip in data is stored uncompressed, as
    np.savez writes them: then no member holds more than the file's own bytes, while
    a compressed one could inflate a small file to gigabytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ValueError(f"its member {info.filename[:60]!r} is compressed, which no "
                                 "run writes")


def _checked_meta(meta):
    """meta, if it is what _write_checkpoint writes (CHECKPOINT_META); else ValueError."""
    if not isinstance(meta, dict):
        raise ValueError(f"its meta is a JSON {type(meta).__name__}, not an object")
    for key, kind in CHECKPOINT_META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"its meta has no {key} of the right type")
    if min(meta["step"], meta["best_step"], meta["evaluations_without_improvement"]) < 0 or (
            len(meta["start_score"]) != 2 or not all(
                isinstance(x, (int, float)) for x in meta["start_score"])):
        raise ValueError("its meta holds values no run writes")
    return meta


def _write_checkpoint(path, fingerprint, step, current, best, start_score):
    arrays = {f"current/{name}": value for name, value in current.items()}
    if best.values is not None:
        arrays.update({f"best/{name}": value for name, value in best.values.items()})
    meta = {"fingerprint": fingerprint, "step": step, "best_step": best.step,
            "best_accuracy": best.accuracy, "best_cross_entropy": best.cross_entropy,
            "evaluations_without_improvement": best.evaluations_without_improvement,
            "start_score": list(start_score)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    # A full disk or a folder at path: one error naming it (the previous checkpoint stays).
    export.write_output("checkpoint_path", path,
                        lambda: atomic_files.write_bytes(path, buffer.getvalue()))


def _evaluate(sess, g, split, rows, truth):
    """Run the whole model on the images at rows. -> ((predictions int64 [n],
    confidences float32 [n]: the probability of each predicted class), accuracy,
    mean cross entropy), row for row; a row whose image could not be decoded is
    predicted as class 0 with a NaN confidence, and makes the cross entropy NaN.

    Only these per-image values are kept from each batch's probabilities [B, C]:
    the whole [n, C] would grow with images times classes.
    """
    init, fetches = g.evaluations[split]
    sess.run(init)
    position_of = {row: n for n, row in enumerate(rows)}
    predictions = np.zeros(len(rows), np.int64)
    confidences = np.full(len(rows), np.nan, np.float32)
    chosen = np.full(len(rows), np.nan, np.float32)  # the probability of the true class
    finite = np.zeros(len(rows), bool)
    for indices, batch in image_pipelines.each_batch(sess, fetches):
        at = np.array([position_of[i] for i in indices.tolist()], np.int64)
        predicted = np.argmax(batch, axis=1)
        predictions[at] = predicted
        confidences[at] = batch[np.arange(len(at)), predicted]
        chosen[at] = batch[np.arange(len(at)), truth[at]]
        finite[at] = np.all(np.isfinite(batch), axis=1)
    accuracy = float(np.mean(predictions == truth))
    cross_entropy = float(np.mean(-np.log(np.maximum(chosen, 1e-30))))
    if not np.all(finite):
        cross_entropy = math.nan
    return (predictions, confidences), accuracy, cross_entropy


def fine_tune(config, labels, arrays, images, row_of, contents, result, loss_settings):
    """Fine-tune the module and the bottleneck-trained layer. -> FineTuningResult.

    arrays: job.split_arrays (validation images needed); images: the run's
    image_pipelines.ImageFiles; row_of: image path -> index there; contents:
    image path -> content SHA-1; result: training.TrainingResult of the
    bottleneck phase (its layer is the start, its test rows are measured
    again); loss_settings: final_layer.LossSettings of that phase.
    """
    tuning = config.fine_tuning
    steps, interval = tuning.fine_tune_steps, tuning.fine_tune_eval_interval
    _, train_y, train_images = arrays["training"]
    _, val_y, val_images = arrays["validation"]
    _, test_y, test_images = arrays["testing"]
    test_rows = result.predictions["testing"][0] if "testing" in result.predictions else []
    eval_rows = {"validation": [row_of[i.path] for i in val_images]}
    if len(test_rows):
        eval_rows["testing"] = [row_of[test_images[r].path] for r in test_rows]
    fingerprint = _fingerprint(config, labels, arrays, contents, result.layer)
    path = checkpoint_file(config.outputs.checkpoint_path)
    resumed = _read_checkpoint(path, fingerprint)
    first_step = resumed[0] if resumed else 0
    g = build_graph(config, len(labels), images, [row_of[i.path] for i in train_images],
                    train_y.tolist(), eval_rows, first_step, loss_settings)
    learning_rate = config_lib.fine_tune_learning_rate(config)
    logging.info(
        "Fine-tuning %s for %d steps (%d images a step, %s, learning rate %g, batch "
        "normalization %s) and evaluating the whole model on %d validation images every %d "
        "steps.", config.module.tfhub_module, steps, tuning.fine_tune_batch_size,
        tuning.fine_tune_optimizer, learning_rate,
        "trained" if tuning.fine_tune_batch_norm else "in inference mode", len(val_y), interval)
    with g.graph.as_default():  # FileWriter refuses to run eagerly.
        writer = tf.compat.v1.summary.FileWriter(
            os.path.join(config.outputs.summaries_dir, TENSORBOARD_RUN), filename_suffix=".fine_tuning"
        )
    with writer, tf.compat.v1.Session(graph=g.graph, config=module_lib.session_config()) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        start_values = sess.run(g.every)  # the module as loaded; the layer set below
        by_name = dict(zip((v.op.name for v in g.every), start_values))
        by_name.update(result.layer)
        start_values = {v.op.name: by_name[v.op.name] for v in g.every}

        def load(values):
            sess.run(g.assign, {g.values[name]: value for name, value in values.items()})

        def snapshot():
            return dict(zip((v.op.name for v in g.every), sess.run(g.every)))

        if resumed:
            _, current, best, start_score = resumed
            if set(current) != set(start_values) or any(
                    current[n].shape != start_values[n].shape for n in current):
                raise config_lib.UsageError(
                    f"The fine-tuning checkpoint {path} does not fit this run's graph though "
                    "it was written for the same flags and data; delete it to fine-tune "
                    "from step 0.")
            load(current)
        else:
            load(start_values)
            _, accuracy, cross_entropy = _evaluate(
                sess, g, "validation", eval_rows["validation"], val_y)
            best = _Best(0, accuracy, cross_entropy)
            _write_scalars(writer, 0, validation_accuracy=accuracy,
                           validation_cross_entropy=cross_entropy)
            start_score = (accuracy, cross_entropy)
            logging.info(
                "Fine-tuning step 0/%d (the bottleneck-trained model): validation accuracy "
                "%.1f%%, cross entropy %.4f (all %d validation images).",
                steps, 100 * accuracy, cross_entropy, len(val_y))
            if steps:
                _write_checkpoint(path, fingerprint, 0, snapshot(), best, start_score)
        sess.run(g.iterator_init)
        step, diverged = first_step, False
        progress = compute.Progress((steps - first_step) * tuning.fine_tune_batch_size,
                                    "Fine-tuning")
        stopped_early = best.evaluations_without_improvement >= (
            config.training.early_stopping_patience or math.inf)
        started = time.monotonic()
        while step < steps and not stopped_early:
            _, loss = sess.run([g.train_step, g.loss])
            step += 1
            progress.update(tuning.fine_tune_batch_size)
            if not math.isfinite(loss):
                logging.warning("Fine-tuning diverged at step %d: the loss is %s.", step, loss)
                diverged = True
                break
            if step % interval and step != steps:
                continue
            _, accuracy, cross_entropy = _evaluate(
                sess, g, "validation", eval_rows["validation"], val_y)
            _write_scalars(writer, step, loss=loss, validation_accuracy=accuracy,
                           validation_cross_entropy=cross_entropy)
            message = (f"Fine-tuning step {step}/{steps}: loss {loss:.4f}, validation accuracy "
                       f"{100 * accuracy:.1f}%, cross entropy {cross_entropy:.4f}")
            if not math.isfinite(cross_entropy):
                logging.warning("%s: fine-tuning diverged.", message)
                diverged = True
                break
            current = snapshot()
            if best.better(accuracy, cross_entropy):
                best = _Best(step, accuracy, cross_entropy, current)
                message += " (best so far)"
            else:
                best.evaluations_without_improvement += 1
            logging.info("%s", message)
            _write_checkpoint(path, fingerprint, step, current, best, start_score)
            patience = config.training.early_stopping_patience
            if patience and best.evaluations_without_improvement >= patience:
                logging.info("Early stopping of fine-tuning at step %d: no better validation "
                             "score in %d evaluations since step %d.", step, patience, best.step)
                stopped_early = True
        elapsed = time.monotonic() - started
        if step > first_step:
            logging.info("Fine-tuned %d steps in %.1fs (%.1f images/s).", step - first_step,
                         elapsed, (step - first_step) * tuning.fine_tune_batch_size / elapsed)
        kept_step = step
        if config.training.keep_best or diverged:
            # Never the diverged state: at worst the bottleneck-trained model.
            kept_step = best.step
            load(best.values if best.values is not None else start_values)
        predictions, confidences, scores = {}, {}, {}
        for split, truth, rows in (("validation", val_y, np.arange(len(val_y))),
                                   ("testing", test_y, np.asarray(test_rows))):
            if split in eval_rows:
                (predicted, confidences[split]), *scores[split] = _evaluate(
                    sess, g, split, eval_rows[split], truth[rows])
                predictions[split] = (rows, predicted)
        _log_choice(kept_step, step, scores["validation"], start_score, diverged, len(val_y))
        kept = snapshot()
    module_names = [v.op.name for v in g.module.variables]
    return FineTuningResult(
        steps=step, kept_step=kept_step, diverged=diverged,
        layer={v.op.name: kept[v.op.name] for v in g.layer_variables},
        module_values=[kept[n] for n in module_names] if kept_step else None,
        predictions=predictions, confidences=confidences,
    )


def _write_scalars(writer, step, **values):
    """One TensorBoard point per value (a float) at fine-tuning step `step`."""
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in values.items()
    ]), step)


def _log_choice(kept_step, steps, kept_score, start_score, diverged, count):
    accuracy, cross_entropy = kept_score
    if kept_step == 0 and diverged:
        logging.warning(
            "Fine-tuning diverged: exporting the bottleneck-trained model (module unchanged), "
            "validation accuracy %.1f%%, cross entropy %.4f (all %d validation images). Lower "
            "--fine_tune_learning_rate.", 100 * accuracy, cross_entropy, count)
        return
    if kept_step == 0:
        logging.info(
            "Keeping the bottleneck-trained model (module unchanged): no fine-tuning step scored "
            "better on the validation images. Validation accuracy %.1f%%, cross entropy %.4f "
            "(all %d validation images).", 100 * accuracy, cross_entropy, count)
        return
    logging.info(
        "Keeping the fine-tuned model from fine-tuning step %d of %d: validation accuracy "
        "%.1f%% (%+.1f points over the bottleneck-trained model's %.1f%%), cross entropy %.4f "
        "(was %.4f) (all %d validation images).", kept_step, steps, 100 * accuracy,
        100 * (accuracy - start_score[0]), 100 * start_score[0], cross_entropy, start_score[1],
        count)
