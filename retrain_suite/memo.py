r"""What a rerun remembers, so that it does not redo work whose result it already holds.

A rerun that changes nothing would otherwise load the module to check names it
checked last time, rebuild and freeze the export graph (Inception V3: two module
loads and 90 MB written, about 10 s on 2 cores) and convert it again, to write
the very files that are already there. Each memo here is a folder of small JSON
entries under the bottleneck cache's folder, one per key:

- `<bottleneck_dir>/modules/`: a module's output size and input size, under
  the module's identity (its files' fingerprint), the image size asked for, the
  final tensor name and the hidden layer's width that were checked against it
  (job.check_names_in_graphs);
- `<bottleneck_dir>/exports/`: the SHA-256 of an exported file as it was
  written, under a key of everything that decides that file (exports.py);
- `<bottleneck_dir>/checks/`: an exported file's predictions on a test set
  (check_memo);
- `<bottleneck_dir>/pictures/`: the SHA-256 of a report page picture, under a
  key of everything drawn in it (picture_memo);
- `<bottleneck_dir>/photos/`: each photo's content hash, orientation and size,
  under its file's signature, per folder of photos (photo_memo).

Every key also holds code_digest(), the digest of the suite's own source, and
TensorFlow's version: new code or a new TensorFlow recomputes everything.
Entries are written whole (atomic_files); one that cannot be read, is damaged
or does not fit is ignored with a warning, and the work is done again. A memo
only ever saves work: nothing it holds is taken without the check it stands
for (an export is kept only when the file on disk still has the remembered
digest). Whoever can write the bottleneck cache can already change what a run
trains on; these folders ask for no more trust than that.
"""

import functools
import hashlib
import json
import os

import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files
from retrain_suite.images import files as image_files

MAX_ENTRY_BYTES = 64 << 20  # a check entry of a million test images is about 8 MB
CHUNK_BYTES = 8 << 20
KINDS = ("modules", "exports", "checks", "pictures", "photos")


@functools.cache
def code_digest():
    """Hex SHA-256 of every .py file of the retrain_suite package (names and bytes), and
    TensorFlow's version: what a memo's result may depend on besides its own key."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(f"tensorflow {tf.__version__}\0".encode())
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if f != "__pycache__")
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            digest.update(f"{os.path.relpath(path, root)}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def key_of(*parts):
    """Hex SHA-256 of parts (str or bytes) and code_digest(), each part delimited."""
    digest = hashlib.sha256(code_digest().encode())
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def file_digest(path):
    """Hex SHA-256 of the bytes of the file at path, or of every file under the folder at
    path (each with its relative name and size). Raises OSError when one cannot be read."""
    digest = hashlib.sha256()
    if tf.io.gfile.isdir(path):
        names = sorted(
            os.path.relpath(os.path.join(folder, name), path)
            for folder, _, files in tf.io.gfile.walk(path) for name in files
        )
    else:
        names = [""]
    for name in names:
        member = os.path.join(path, name) if name else path
        digest.update(f"{name}\0".encode("utf-8", "surrogateescape"))
        digest.update(_member_digest(member))
    return digest.hexdigest()


def data_digest(data):
    """What file_digest gives for a file holding data (bytes)."""
    return hashlib.sha256(b"\0" + hashlib.sha256(data).digest()).hexdigest()


# Digests of local files this process hashed: (path, st_dev, st_ino, st_size, st_mtime_ns,
# st_ctime_ns) -> SHA-256 bytes. The export memo and the check memo both hash each
# exported file (90 MB for Inception V3, about 0.2 s each time on 2 cores); a file
# rewritten, replaced or touched since has another signature and is hashed again.
_digests = {}


def _member_digest(path):
    before = _signature(path)
    if before is not None and before in _digests:
        return _digests[before]
    digest = _read_digest(path)
    if before is not None and _signature(path) == before:  # unchanged while it was read
        _digests[before] = digest
    return digest


def signature_record(path):
    """The local file at path as this process last hashed it, for a memo entry: {"signature":
    its _signature as a list, "sha256": hex of its bytes}; None when it was not hashed
    since it last changed (or is not a local regular file)."""
    now = _signature(path)
    if now is None or now not in _digests:
        return None
    return {"signature": list(now), "sha256": _digests[now].hex()}


def recall_digest(path, record):
    """Let file_digest(path) answer from record (a signature_record of an earlier run)
    without reading the file, when the file still has that signature: the same path,
    device, inode, size, modification and change times (as make, rsync and git judge
    a file unchanged; a write changes the change time, which no one can set back).
    Exported files are rewritten by rename, so a changed one also has another inode.
    -> whether it did. A damaged or foreign record is ignored."""
    now = _signature(path)
    try:
        known = tuple(record["signature"])
        content = bytes.fromhex(record["sha256"])
    except (TypeError, KeyError, ValueError):
        return False
    if now is None or known != now or len(content) != hashlib.sha256().digest_size:
        return False
    _digests[now] = content
    return True


def _signature(path):
    """What identifies a local regular file's content to this process, or None."""
    info = None if "://" in path else image_files.regular_file_stat(path)
    if info is None:
        return None
    return (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)


def _read_digest(path):
    digest = hashlib.sha256()
    if "://" in path:
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
        return digest.digest()
    # Local: never wait on a FIFO or device put where an output was written, and never
    # hold more than a chunk of a file that may be huge.
    digest, problem = image_files.sha256_of_regular_file(path, CHUNK_BYTES)
    if problem:
        raise OSError(f"{path} {image_files.as_clause(problem)}")
    return digest.digest()


class Memo:
    """One kind of entry (one of KINDS) under folder; folder None remembers nothing."""

    def __init__(self, folder, kind):
        if kind not in KINDS:
            raise ValueError(f"memo kind {kind!r} is not one of {KINDS}")
        self.folder, self.kind = folder, kind

    @classmethod
    def of_cache(cls, bottleneck_dir, kind):
        """The memo kept in the bottleneck cache's folder when it is local (None: a remote
        cache, where reading an entry may cost as much as the work it saves)."""
        local = bottleneck_dir and "://" not in bottleneck_dir
        return cls(bottleneck_dir if local else None, kind)

    @property
    def location(self):
        return os.path.join(self.folder, self.kind) if self.folder else None

    def _path(self, key):
        return os.path.join(self.folder, self.kind, key + ".json")

    def get(self, key):
        """The entry (a dict) stored under key, or None: none, unreadable or damaged."""
        if not self.folder:
            return None
        path = self._path(key)
        data, problem = image_files.read_regular_file(path, MAX_ENTRY_BYTES)
        if problem:
            if problem != image_files.MISSING:
                logging.warning("Ignoring the memo %s: it %s.", path, image_files.as_clause(problem))
            return None
        try:
            entry = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # too deeply nested
            logging.warning("Ignoring the damaged memo %s (%s).", path, e)
            return None
        if not isinstance(entry, dict):
            logging.warning("Ignoring the damaged memo %s (not a JSON object).", path)
            return None
        return entry

    def put(self, key, entry):
        """Store entry (a JSON-able dict) under key. A failure to write only warns: the work
        itself is done, and the next run does it again. An entry larger than get reads
        (MAX_ENTRY_BYTES) is not written."""
        if not self.folder:
            return
        try:
            text = json.dumps(entry, allow_nan=False)  # ASCII: one byte a character
            if len(text) > MAX_ENTRY_BYTES:
                logging.debug("Not remembering %s in %s: %d bytes, over %d.", self.kind,
                              self.location, len(text), MAX_ENTRY_BYTES)
                return
            atomic_files.write_text(self._path(key), text)
        except (OSError, ValueError, tf.errors.OpError) as e:  # gfile's errors are OpErrors
            logging.warning("Could not remember %s in %s (%s); the next run does it again.",
                            self.kind, self.location, e)
