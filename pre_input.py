r"""Which images exist, what class each belongs to, and which set it falls in.

A dataset is a folder with one subfolder per class:

    data/daisy/photo1.jpg
    data/daisy/more/photo2.png      (nested folders belong to their class)
    data/roses/photo3.jpg

The label of a class is its folder name exactly as written. Classes are sorted,
and a label's position in that order is the index the classifier outputs.

Each image is put in the training, validation or testing set by a hash of its
path relative to the image folder, so the split never changes when the folder
moves, when the OS changes, or when other images are added or removed. A file
named `cat_nohash_2.jpg` hashes like `cat`, which keeps several shots of one
subject in the same set.

As a script, it checks and splits a dataset ahead of training:

    python pre_input.py --image_dir data/ --output_dir prepared/

decodes every image once, and writes `labels.txt` plus `training.txt`,
`validation.txt` and `testing.txt` (one line per image: relative path, a tab,
label), then prints a table of counts per class.
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.pre_input()
