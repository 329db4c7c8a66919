"""Outputs written whole or not at all.

Each writer puts the data under a temporary name beside the target and renames
it into place, so a crash or a kill leaves either the previous file or the new
one, never half of one. Works on any filesystem tf.io.gfile supports.
"""

import os
import uuid

import tensorflow as tf


def temporary_name(path):
    """A unique sibling of path, for writing before the rename."""
    return f"{path.rstrip('/')}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_parent(path):
    """Create the folder that will hold path, if it has one."""
    folder = os.path.dirname(path.rstrip("/"))
    if folder:
        tf.io.gfile.makedirs(folder)


def write_bytes(path, data):
    make_parent(path)
    temporary = temporary_name(path)
    try:
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def replace_dir(path, write_into):
    """Fill a new folder with write_into(folder), then swap it in at path.

    write_into receives a path that does not exist yet and must create it (as
    SavedModel builders do). An existing folder at path is replaced only once
    the new one is complete.
    """
    path = path.rstrip("/")
    make_parent(path)
    temporary = temporary_name(path)
    try:
        write_into(temporary)
    except BaseException:
        _remove_quietly(temporary)
        raise
    if tf.io.gfile.exists(path):
        retired = temporary_name(path) + ".old"
        tf.io.gfile.rename(path, retired)
        tf.io.gfile.rename(temporary, path)
        tf.io.gfile.rmtree(retired)
    else:
        tf.io.gfile.rename(temporary, path)


def _remove_quietly(path):
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass
