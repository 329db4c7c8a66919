r"""Check and split a dataset ahead of training.

    python pre_input.py --image_dir data/ --output_dir prepared/

decodes every image once, reports the files it cannot use and the copies
among the images, and writes `labels.txt` plus `training.txt`,
`validation.txt` and `testing.txt` (one line per image: relative path, a tab,
label), then prints a table of counts per class; --tfrecords also writes the
images as TFRecord files. How images are split: retrain_suite/dataset.py.
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.pre_input()
