"""The --multi_label flags' section, and the flags a multi-label run refuses.

A flag that has no multi-label meaning is refused in one line rather than
accepted and ignored: class weighting and uniform sampling (defined by one
class per image), fine-tuning, distortions and TFRecords (which train from
images or record files, not from the label sets built here), and the
single-label accuracy flags.
"""

import dataclasses

from retrain_suite import errors

DEFAULT_DELIMITER = ";"


# Characters that cannot separate labels inside the CSV's labels column: the
# column separator, the quote, and line breaks.
_UNUSABLE_DELIMITERS = (",", '"', "\n", "\r")


class MultiLabelUsageError(errors.SuiteError):
    """A --multi_label flag, or a flag given with it, the run cannot work with."""

    area = "flags"


@dataclasses.dataclass(frozen=True)
class MultiLabelConfig:
    """Photos with several labels: where the labels come from."""

    multi_label: bool = False  # sigmoid outputs, one threshold per class
    labels_csv: str = ""  # "path,labels" rows; "": the labels are the folders holding each photo
    labels_delimiter: str = DEFAULT_DELIMITER  # between labels in the CSV's labels column

    def validate(self):
        """Raise MultiLabelUsageError for values that cannot work."""
        if not self.multi_label:
            for name, default in (("labels_csv", ""), ("labels_delimiter", DEFAULT_DELIMITER)):
                if getattr(self, name) != default:
                    raise MultiLabelUsageError(
                        f"--{name} applies only to --multi_label; add --multi_label or drop it.")
            return
        delimiter = self.labels_delimiter
        if len(delimiter) != 1 or delimiter in _UNUSABLE_DELIMITERS or not delimiter.isprintable():
            raise MultiLabelUsageError(
                f"--labels_delimiter={delimiter!r} must be one printable character other than "
                "',' and '\"' (the CSV's own), e.g. ';'.")


# (flag, how to tell it is set, why it is refused) for flags of other sections.
def _refused(config):
    training, evaluation = config.training, config.evaluation
    from retrain_suite import config as config_lib  # noqa: PLC0415 - config imports this room

    return [
        ("tfrecord_dir", bool(config.data.tfrecord_dir),
         "TFRecord files hold one label per image; give --image_dir (and --labels_csv)"),
        ("fine_tune_steps", bool(config.fine_tuning.fine_tune_steps),
         "fine-tuning trains a softmax layer"),
        ("distortions (--flip_left_right, --random_*)", config_lib.distortions_from(config).any(),
         "distorted images are drawn one class per image"),
        ("class_weighting=balanced", training.class_weighting != "none",
         "its weights are per class of a one-label image"),
        ("sampling=uniform", training.sampling != "proportional",
         "it draws a class, then an image of that one class"),
        ("intermediate_store_frequency", bool(config.outputs.intermediate_store_frequency),
         "intermediate graphs have no thresholds yet"),
        ("print_misclassified_test_images", evaluation.print_misclassified_test_images,
         "the per-class table and the exact-match ratio say what is wrong"),
        ("assert_accuracy_at_least", evaluation.assert_accuracy_at_least is not None,
         "accuracy is a single-label measure"),
        ("validation_batch_size", evaluation.validation_batch_size != 100,
         "every evaluation scores the whole validation set (mAP needs all of it)"),
        ("test_batch_size", evaluation.test_batch_size != -1,
         "the test metrics use every test image"),
    ]


def check_with_other_flags(config):
    """Raise MultiLabelUsageError when a flag given with --multi_label has no meaning there.

    config: a config.RetrainConfig whose multi_label section is on.
    """
    for flag, given, why in _refused(config):
        if given:
            raise MultiLabelUsageError(
                f"--{flag} does not work with --multi_label: {why}; drop it.")
