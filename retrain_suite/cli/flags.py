"""Flag definitions shared by the command lines: each flag is defined here once.

Defaults come from the library (retrain_suite.config and the modules' own
constants), so a flag and the library it feeds cannot disagree. Flags are
defined by calling a function, never on import.
"""

import dataclasses
import sys

from absl import flags

from retrain_suite import config as config_lib
from retrain_suite import final_layer, schedules, tflite
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import stores as stores_lib
from retrain_suite.dataset import split as split_lib

FLAGS = flags.FLAGS
_d = config_lib.default


def define_command_flags(define):
    """Run define(), which defines a command's flags, and let --help list them.

    absl's --help lists the key flags of the main module (sys.argv[0]); the
    flags are defined here in the library, so they are registered for it.
    """
    before = set(FLAGS)
    define()
    for name in sorted(set(FLAGS) - before):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def config_from_flags(config_class):
    """The parsed flags as a config_class: a frozen dataclass whose field names are flag names."""
    return config_class(**{
        field.name: FLAGS[field.name].value for field in dataclasses.fields(config_class)
    })


def define_image_dir(required=False):
    """--image_dir; required=True for commands that have no other input (no default)."""
    flags.DEFINE_string(
        "image_dir", None if required else _d("image_dir"),
        "Folder with one subfolder of images per class.",
    )


def define_split_flags():
    flags.DEFINE_float(
        "testing_percentage", _d("testing_percentage"), "Percentage of images used as the testing set."
    )
    flags.DEFINE_float(
        "validation_percentage", _d("validation_percentage"),
        "Percentage of images used as the validation set.",
    )


def define_split_by():
    flags.DEFINE_enum(
        "split_by", _d("split_by"), list(split_lib.SPLIT_BY),
        "What picks an image's set: a hash of its relative path (the classic split), or of "
        "its content, which keeps every copy of a photo in one set.",
    )


def define_max_image_pixels():
    flags.DEFINE_integer(
        "max_image_pixels", _d("max_image_pixels"),
        "Images with more pixels (width x height, read from the header) are refused "
        "(skipped and reported) instead of decoded; so is an image whose header does not "
        "give its size.",
    )


def define_module_flags():
    """The module, its input size, the cache and the precision of its vectors."""
    flags.DEFINE_string(
        "tfhub_module", _d("tfhub_module"),
        "TF Hub handle or local SavedModel folder of an image feature-vector module.",
    )
    flags.DEFINE_integer(
        "image_size", _d("image_size"),
        "Input height and width for modules whose signature does not fix them.",
    )
    flags.DEFINE_string("bottleneck_dir", _d("bottleneck_dir"), "Where bottleneck vectors are cached.")
    flags.DEFINE_enum(
        "bottleneck_store", _d("bottleneck_store"), list(stores_lib.KINDS),
        "Where computed bottleneck vectors go: files (one small file per image) or packed "
        "(shards of many vectors each, under <bottleneck_dir>/<module key>/packed/: fewer, "
        "larger files, faster to load and to list on an object store). Both are always read.",
    )
    flags.DEFINE_bool(
        "mixed_precision", _d("mixed_precision"),
        "Compute bottlenecks in bfloat16 (CPUs with bfloat16 instructions) or float16 (GPU); "
        "cached under their own key. The exported graph stays float32.",
    )


def define_logging_verbosity():
    flags.DEFINE_enum(
        "logging_verbosity", "INFO", ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"], "How much to log."
    )


def define_fine_tuning_flags():
    """The --fine_tune_* flags: training the module itself after the final layer."""
    flags.DEFINE_integer(
        "fine_tune_steps", _d("fine_tune_steps"),
        "After the final layer has trained on bottlenecks, train the module's own weights "
        "with it for this many steps on images; 0 (default) does not fine-tune.",
    )
    flags.DEFINE_float(
        "fine_tune_learning_rate", _d("fine_tune_learning_rate"),
        "Learning rate of fine-tuning. Default: --learning_rate / "
        f"{config_lib.FINE_TUNE_LEARNING_RATE_DIVISOR}.",
    )
    flags.DEFINE_integer(
        "fine_tune_batch_size", _d("fine_tune_batch_size"), "Images per fine-tuning step."
    )
    flags.DEFINE_enum(
        "fine_tune_optimizer", _d("fine_tune_optimizer"), final_layer.OPTIMIZERS,
        "Optimizer of fine-tuning (momentum: 0.9).",
    )
    flags.DEFINE_integer(
        "fine_tune_eval_interval", _d("fine_tune_eval_interval"),
        "Fine-tuning steps between evaluations of the whole model on the validation images "
        "(each also writes the fine-tuning checkpoint).",
    )
    flags.DEFINE_bool(
        "fine_tune_batch_norm", _d("fine_tune_batch_norm"),
        "Call the module with training=True while fine-tuning: batch normalization uses each "
        "batch's statistics and updates its moving averages (use with large batches only).",
    )


def define_tuning_flags():
    """The --tune_* flags: the search over the final layer's settings (retrain_suite.tuning)."""
    flags.DEFINE_integer(
        "tune_trials", _d("tune_trials"),
        "Before training, try this many settings of the final layer (learning rate, optimizer, "
        "schedule, L2, label smoothing, hidden units, dropout, steps) by cross-validation on "
        "the cached bottlenecks, trial 0 being these flags' own; train the one chosen. 0 "
        f"(default): no tuning. At most {config_lib.MAX_TUNE_TRIALS}.",
    )
    flags.DEFINE_float(
        "tune_seconds", _d("tune_seconds"),
        "Time budget of the search in seconds: no trial is started that would end past it "
        "(trial 0 always runs). Alone, trials run until the budget is spent.",
    )
    flags.DEFINE_integer(
        "tune_folds", _d("tune_folds"),
        "Cross-validation folds of the search, over the training and validation images.",
    )


def define_multi_label_flags():
    """--multi_label and where its labels come from."""
    flags.DEFINE_bool(
        "multi_label", _d("multi_label"),
        "Photos with several labels: one sigmoid score per label, and one threshold per label "
        "chosen on the validation set (each label above its threshold is predicted). Labels "
        "from --labels_csv, or else from the class folders holding each photo (a photo filed "
        "in two folders has both labels). The split is always by content.",
    )
    flags.DEFINE_string(
        "labels_csv", _d("labels_csv"),
        "With --multi_label: a UTF-8 CSV file with the header 'path,labels', then one row per "
        "photo: its path relative to --image_dir and its labels separated by "
        "--labels_delimiter (an empty labels cell: a photo with none of the labels).",
    )
    flags.DEFINE_string(
        "labels_delimiter", _d("labels_delimiter"),
        "With --labels_csv: the character between labels in the labels column.",
    )


def define_retrain_flags():
    """Every flag of retrain.py, one per field of config.RetrainConfig (plus logging)."""
    # Input and split.
    define_image_dir()
    flags.DEFINE_string(
        "tfrecord_dir", _d("tfrecord_dir"),
        "Instead of --image_dir: a folder written by pre_input.py --tfrecords (split included).",
    )
    define_split_flags()
    define_split_by()
    # Module and bottlenecks.
    define_module_flags()
    flags.DEFINE_integer(
        "bottleneck_batch_size", _d("bottleneck_batch_size"),
        "Images per forward pass when computing bottlenecks. Default: "
        + batch_size_lib.default_description() + ".",
    )
    define_max_image_pixels()
    flags.DEFINE_string(
        "memory_limit", _d("memory_limit"),
        "The memory this run may use, e.g. 8GB, 512MB or 16GiB. When the bottleneck "
        "vectors would not fit in it, training streams them from the packed store instead "
        "of refusing the run. Default: this machine's memory.",
    )
    flags.DEFINE_bool(
        "stream_bottlenecks", _d("stream_bottlenecks"),
        "Stream the bottleneck vectors from the packed store (<bottleneck_dir>/<module "
        "key>/packed/) while training and evaluating, even when they fit in memory.",
    )
    # Training.
    flags.DEFINE_integer("how_many_training_steps", _d("how_many_training_steps"), "Training steps to run.")
    flags.DEFINE_float("learning_rate", _d("learning_rate"), "Learning rate of the final layer's training.")
    flags.DEFINE_enum("optimizer", _d("optimizer"), final_layer.OPTIMIZERS, "Optimizer of the final layer.")
    flags.DEFINE_integer("train_batch_size", _d("train_batch_size"), "Bottlenecks per training step.")
    flags.DEFINE_enum(
        "learning_rate_schedule", _d("learning_rate_schedule"), schedules.SCHEDULES,
        "constant; exponential (times --learning_rate_decay every --decay_steps, smoothly); "
        "cosine (from --learning_rate down to 0 at the last step).",
    )
    flags.DEFINE_float(
        "learning_rate_decay", _d("learning_rate_decay"),
        "Exponential schedule only: factor the rate is multiplied by over --decay_steps.",
    )
    flags.DEFINE_integer(
        "decay_steps", _d("decay_steps"),
        "Exponential schedule only: steps over which the rate falls by --learning_rate_decay; "
        "0 means --how_many_training_steps.",
    )
    flags.DEFINE_integer(
        "hidden_units", _d("hidden_units"), "Width of a ReLU hidden layer before the softmax; 0 for none.",
    )
    flags.DEFINE_float(
        "dropout", _d("dropout"),
        "Fraction of the softmax layer's inputs dropped at each training step (never at "
        "evaluation or in the exported graph); in [0, 1).",
    )
    flags.DEFINE_float(
        "l2_regularization", _d("l2_regularization"),
        "Adds this times the sum of squared weights to the loss.",
    )
    flags.DEFINE_float(
        "label_smoothing", _d("label_smoothing"),
        "Train towards (1 - e) on the true class and e / classes everywhere; in [0, 1).",
    )
    flags.DEFINE_enum(
        "class_weighting", _d("class_weighting"), final_layer.CLASS_WEIGHTINGS,
        "balanced: weight each class's loss by N / (classes * images of the class), so "
        "small classes count as much as large ones.",
    )
    flags.DEFINE_enum(
        "sampling", _d("sampling"), final_layer.SAMPLINGS,
        "proportional: shuffled epochs over the training images; uniform: every class "
        "equally likely per training example (oversamples small classes).",
    )
    flags.DEFINE_integer(
        "early_stopping_patience", _d("early_stopping_patience"),
        "Stop after this many evaluations without a better validation score; 0 never stops early.",
    )
    flags.DEFINE_bool(
        "keep_best", _d("keep_best"),
        "Export the final layer of the evaluation with the best validation score, not the "
        "last step's (only when there are validation images).",
    )
    flags.DEFINE_integer(
        "random_seed", _d("random_seed"),
        "Seed for weights, shuffling and sampling; the same seed and data give the same "
        "result. Default: a fresh seed, printed in the log.",
    )
    define_fine_tuning_flags()
    define_tuning_flags()
    define_multi_label_flags()
    # Evaluation.
    flags.DEFINE_integer(
        "eval_step_interval", _d("eval_step_interval"), "How often (in steps) to evaluate and log."
    )
    flags.DEFINE_integer(
        "validation_batch_size", _d("validation_batch_size"),
        "Validation images sampled at each evaluation; -1 uses the whole validation set.",
    )
    flags.DEFINE_integer(
        "test_batch_size", _d("test_batch_size"),
        "Test images sampled for the final test accuracy; -1 uses the whole testing set.",
    )
    flags.DEFINE_bool(
        "print_misclassified_test_images", _d("print_misclassified_test_images"),
        "List every wrong test image with its true and predicted label.",
    )
    flags.DEFINE_string(
        "eval_report", _d("eval_report"),
        "If set, write the test and validation reports (accuracy, per-class precision, "
        "recall, F1, support, confusion matrix) here as JSON.",
    )
    flags.DEFINE_float(
        "assert_accuracy_at_least", _d("assert_accuracy_at_least"),
        "Fail (exit status 1) without exporting when the test accuracy (validation accuracy "
        "if there are no test images) is below this fraction, e.g. 0.9; and, after export, "
        "when any exported file scores below it on the same images (the files stay written).",
    )
    # Outputs.
    flags.DEFINE_string("output_graph", _d("output_graph"), "Where to write the frozen graph.")
    flags.DEFINE_string("output_labels", _d("output_labels"), "Where to write the labels file.")
    flags.DEFINE_string(
        "final_tensor_name", _d("final_tensor_name"),
        "Name of the output op: the softmax (the sigmoid scores with --multi_label).",
    )
    flags.DEFINE_string(
        "saved_model_dir", _d("saved_model_dir"), "If set, also write a SavedModel for serving here."
    )
    flags.DEFINE_string(
        "tflite_output_file", _d("tflite_output_file"),
        "If set, also write the classifier as a TFLite model here, with its labels and input "
        "normalization inside as TFLite Model Metadata.",
    )
    flags.DEFINE_enum(
        "tflite_quantization", _d("tflite_quantization"), tflite.QUANTIZATIONS,
        "none; dynamic (int8 weights); float16 (float16 weights); int8 (integer-only, uint8 "
        "input and output, calibrated on up to 100 training images chosen by --random_seed).",
    )
    flags.DEFINE_string(
        "onnx_output_file", _d("onnx_output_file"),
        "If set, also write the classifier as an ONNX model here (float32 [N, H, W, 3] in [0, 1] "
        "-> probabilities), with its labels in the model's metadata; needs the [onnx] extra.",
    )
    flags.DEFINE_string(
        "intermediate_output_graphs_dir", _d("intermediate_output_graphs_dir"),
        "Where intermediate frozen graphs go (see --intermediate_store_frequency).",
    )
    flags.DEFINE_integer(
        "intermediate_store_frequency", _d("intermediate_store_frequency"),
        "Export a frozen graph every this many steps; 0 turns it off.",
    )
    flags.DEFINE_string(
        "checkpoint_path", _d("checkpoint_path"),
        "Checkpoint of the trained final layer; the export is restored from it.",
    )
    flags.DEFINE_string(
        "summaries_dir", _d("summaries_dir"), "TensorBoard logs (train/ and validation/ runs)."
    )
    flags.DEFINE_string(
        "report_dir", _d("report_dir"),
        "Folder for the run's report: report.html (one self-contained page: settings, data, "
        "curves, per-class tables, confusion matrices, misclassified test images, exported "
        "files, time by phase), results.csv (every evaluation) and the pictures as PNG. "
        "Replaced as a whole; a folder holding other files is refused. Empty: no report.",
    )
    define_logging_verbosity()
    # Distortions of the training images.
    flags.DEFINE_bool(
        "flip_left_right", _d("flip_left_right"), "Randomly mirror half of the training images."
    )
    flags.DEFINE_integer(
        "random_crop", _d("random_crop"),
        "Margin in percent: enlarge by it, then cut a random window of input size.",
    )
    flags.DEFINE_integer("random_scale", _d("random_scale"), "Extra random enlargement, 0 to this percent.")
    flags.DEFINE_integer(
        "random_brightness", _d("random_brightness"),
        "Multiply pixel values by a random factor within +-this percent.",
    )
    flags.DEFINE_float(
        "random_rotation", _d("random_rotation"), "Rotate by a random angle within +-this many degrees."
    )
    flags.DEFINE_float(
        "random_hue", _d("random_hue"), "Shift hue by a random amount within +-this (0 to 0.5)."
    )
    flags.DEFINE_float(
        "random_saturation", _d("random_saturation"),
        "Multiply saturation by a random factor within 1+-this (0 to 1).",
    )
