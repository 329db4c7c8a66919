r"""Outputs written whole or not at all.

Each writer puts the data under a temporary name beside the target and renames
it into place, so a crash or a kill leaves either the previous file or the new
one, never half of one. Works on any filesystem tf.io.gfile supports.
"""

import errno
import fcntl
import os
import re
import stat
import uuid

import tensorflow as tf

from retrain_suite import errors
from retrain_suite.images import files as image_files

# What a SavedModel writer puts in its folder: a folder holding only these (or
# nothing) is one this suite may replace.
SAVED_MODEL_ENTRIES = frozenset({"saved_model.pb", "variables", "assets", "fingerprint.pb"})


# The files a SavedModel writer puts inside its folders, by folder (the suite's
# models have no assets): a file named otherwise there is someone else's.
_OWNED_FILES_INSIDE = {
    "variables": re.compile(r"variables\.(index|data-\d{5}-of-\d{5})"),
    "assets": re.compile(r"(?!)"),
}


# The longest suffix temporary_name adds (".tmp-" + a pid of up to 7 digits +
# "-" + 8 hex), plus the ".old" of a folder being replaced: a target name must
# leave this much room under the filesystem's name limit.
LONGEST_TEMPORARY_SUFFIX = len(".tmp-") + 7 + 1 + 8 + len(".old")


def temporary_name(path):
    """A unique sibling of path, for writing before the rename."""
    return f"{path.rstrip('/')}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def make_parent(path):
    """Create the folder that will hold path, if it has one."""
    folder = os.path.dirname(path.rstrip("/"))
    if folder:
        tf.io.gfile.makedirs(folder)


def write_bytes(path, data):
    if tf.io.gfile.isdir(path):
        # A rename over a folder would fail only after the whole write.
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
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


def replace_dir(path, write_into, owned_entries):
    """Fill a new folder with write_into(folder), then swap it in at path.

    write_into receives a path that does not exist yet and must create it (as
    SavedModel builders do). An existing folder at path is replaced only once
    the new one is complete, and only if it is empty or holds nothing but
    owned_entries (names of the files and folders write_into makes; see
    check_replaceable): a folder with anything else in it, a file or a symlink
    at path raise FileExistsError before anything is written, and are never
    removed.
    """
    path = path.rstrip("/")
    check_replaceable(path, owned_entries)
    make_parent(path)
    temporary = temporary_name(path)
    try:
        write_into(temporary)
        if tf.io.gfile.exists(path):
            check_replaceable(path, owned_entries)  # Again: it may have changed meanwhile.
            retired = temporary_name(path) + ".old"
            tf.io.gfile.rename(path, retired)
            try:
                tf.io.gfile.rename(temporary, path)
            except BaseException:
                tf.io.gfile.rename(retired, path)  # The previous folder back, not a gap.
                raise
            tf.io.gfile.rmtree(retired)
        else:
            tf.io.gfile.rename(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def check_replaceable(path, owned_entries):
    """Raise FileExistsError unless path is absent, or a folder replace_dir may replace.

    That is an empty folder, or one holding nothing but owned_entries, with
    only the files a SavedModel writer names in those that are folders
    (variables/variables.index and variables.data-NNNNN-of-NNNNN). Anything
    else in it is someone else's, so it is refused: another name, a folder
    named as an owned file (saved_model.pb/, report.html/), a folder or
    a differently named file below an owned folder (notes.txt in variables/),
    and a link anywhere, even one named as an owned entry (tf.io.gfile.rmtree
    follows a link to a folder and deletes what that folder holds).
    """
    path = path.rstrip("/")
    if _is_link(path):
        raise FileExistsError(errno.EEXIST, "is a symlink; give the real folder", path)
    if not tf.io.gfile.exists(path):
        return
    if not tf.io.gfile.isdir(path):
        raise FileExistsError(errno.EEXIST, "is a file, not a folder", path)
    foreign = []
    for entry in sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path)):
        full = f"{path}/{entry}"
        if _is_link(full):
            foreign.append(f"the link {entry}")
        elif entry not in owned_entries:
            foreign.append(entry)
        elif tf.io.gfile.isdir(full) and entry not in _OWNED_FILES_INSIDE:
            # An owned file's name on a folder (report.html/ full of photos): not ours.
            foreign.append(f"the folder {entry}")
        elif tf.io.gfile.isdir(full):
            for inner in sorted(e.rstrip("/") for e in tf.io.gfile.listdir(full)):
                if _is_link(f"{full}/{inner}"):
                    foreign.append(f"the link {entry}/{inner}")
                elif (tf.io.gfile.isdir(f"{full}/{inner}")
                      or not _owned_inside(entry, inner)):
                    foreign.append(f"{entry}/{inner}")
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            errno.ENOTEMPTY, f"holds files this suite did not write ({shown})", path
        )


def _owned_inside(folder, name):
    """Whether a file called name inside an owned folder is one a SavedModel writer makes."""
    pattern = _OWNED_FILES_INSIDE.get(folder)
    return pattern is None or pattern.fullmatch(name) is not None


def _is_link(path):
    return "://" not in path and os.path.islink(path)


class Locked(errors.SuiteError):
    """Another process holds the lock."""

    area = "outputs"


class LockFileError(errors.SuiteError):
    """What is at a lock file's path is not a lock file this suite may use."""

    area = "outputs"


# What a lock file holds: the holder's pid, or nothing. A file holding anything
# else is someone else's, and is never truncated.
_LOCK_CONTENT = re.compile(rb"(\d{1,10}\n?)?")


class exclusive_lock:
    """`with exclusive_lock(path):` holds an fcntl lock on the file at path, or raises Locked.

    The lock goes with the process: a killed holder never leaves it stuck. The
    lock file (it holds the holder's pid) stays behind, empty of meaning once
    unlocked. It is opened without following a link and without blocking, and
    used only if it is a regular file with one name holding nothing but a pid:
    a FIFO or device there would hang the open or the read, and a link or a
    user's file would be truncated. Anything else raises LockFileError.
    """

    def __init__(self, path):
        self.path = path
        self._fd = None

    def __enter__(self):
        make_parent(self.path)
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Locked(os.pread(fd, 64, 0).decode("ascii", "replace").strip()) from None
            if not _LOCK_CONTENT.fullmatch(os.pread(fd, 64, 0)):
                raise LockFileError(f"cannot lock {self.path}: it holds something other than "
                                    "a process id, so it is not a lock file; move it away")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _open(self):
        """The lock file's descriptor, opened read-write, created if absent."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link
                raise LockFileError(f"cannot lock {self.path}: it is a symlink, and a lock file "
                                    "is never written through one; move it away") from None
            try:
                mode = os.lstat(self.path).st_mode
            except OSError:
                mode = stat.S_IFREG
            if stat.S_ISREG(mode):
                raise LockFileError(f"cannot lock {self.path}: {e.strerror}") from None
            raise self._not_a_file(mode) from None
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            return fd
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise self._not_a_file(info.st_mode)
        raise LockFileError(f"cannot lock {self.path}: the file has other names (hard links), "
                            "so it is someone else's; move it away")

    def _not_a_file(self, mode):
        kind = image_files.special_file_kind(mode)
        return LockFileError(f"cannot lock {self.path}: it is {kind}, not a regular file; "
                             "move it away")

    def __exit__(self, *exc):
        os.close(self._fd)  # Closing releases the lock.
        self._fd = None
        return False


def _remove_quietly(path):
    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except tf.errors.OpError:
        pass
