r"""What a rerun remembers of the photos it read, so that unchanged photos are not read again.

Every run inspects each photo before it looks up its vector
(images.files.inspect_image_file): it reads the whole file and hashes it, since
the cache is keyed by content. On 2 cores that took 1.6 to 2.4 s for the
benchmark's 3,670 photos (200x150 to 2592x1944) and 0.4 s for 4,000 small ones,
on every rerun, although nothing changed; answered from here, 0.03 s.
`PhotoMemo.inspect` gives the same answers, and reads only the photos whose
file changed since a run read them.

Entries live under `<bottleneck_dir>/photos/` (memo.Memo, kind "photos"), one
per folder of photos, keyed by the folder's absolute path and the suite's code
(memo.key_of): {"photos": {name: [st_dev, st_ino, st_size, st_mtime_ns,
st_ctime_ns, sha1, orientation, width, height]}}. A photo is answered from its
entry only when os.stat gives the same five numbers now: the same test make,
rsync and git use to judge a file unchanged. A write changes the change time,
which no one can set back, and a file put in its place has another inode or
change time.

What is remembered, and when:
- Only usable photos (no problem found). The pixel limit (--max_image_pixels)
  is applied when an entry is used, since it may change between runs; files
  refused for any other reason are read again every run.
- Under the signature of the file it read (fstat of the open descriptor,
  taken before reading), and only when its change and modification times are
  at least RACY_NS older than the moment the run began reading. Any write
  after that fstat, even during the read, then gives the file a later change
  time. A photo written within the same tick of the file
  system's clock as it was read could be written again within that tick, with
  the same size and times (git calls such entries "racily clean"): it is read
  again by the next run, and remembered then.
- Only local files on a file system mounted read-write: a remote path
  (gs://...) is read every run, and so is a photo on a read-only file system
  (squashfs, erofs, ISO 9660, a read-only mount): those keep no change time of
  their own, and another image mounted in the same place can hold a changed
  photo with the same inode, size and times.

What the signature cannot see: a write through a shared memory map to a page
already dirty changes the bytes but neither time, as it escapes make, rsync and
git. Deleting `<bottleneck_dir>/photos/` makes the next run read every photo.

Whoever can write the bottleneck cache can already change what a run trains
on; this folder asks for no more trust than that (see memo.py).
"""

import dataclasses
import os
import re
import time

from retrain_suite import memo as memo_lib
from retrain_suite.images import files as image_files

RACY_NS = 2_000_000_000  # a photo changed less than 2 s before the read is not remembered
# Entries of one folder: about 150 bytes each, so this stays within
# memo.MAX_ENTRY_BYTES unless the names are long; a larger folder, or one whose
# entry is over that (Memo.put does not write it), is read every run.
MAX_PHOTOS_PER_FOLDER = 200_000
_SHA1 = re.compile("[0-9a-f]{40}")


@dataclasses.dataclass(frozen=True)
class Inspected:
    """PhotoMemo.inspect's answer: one ImageFile per path, and how many were read."""

    files: list
    read: int  # photos read (and hashed) in this call; the others came from the memo


class PhotoMemo:
    """ImageFiles of local photos, remembered in a memo.Memo of kind "photos"."""

    def __init__(self, memo):
        self.memo = memo

    @classmethod
    def of_cache(cls, bottleneck_dir):
        """The memo kept in the bottleneck cache's folder (nothing remembered when the
        cache is remote or there is none)."""
        return cls(memo_lib.Memo.of_cache(bottleneck_dir, "photos"))

    def inspect(self, paths, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
        """image_files.inspect_image_files(paths, max_pixels), reading only the photos not
        remembered unchanged; then remembers what it read. -> Inspected."""
        paths = list(paths)
        if not self.memo.folder:
            return Inspected(image_files.inspect_image_files(paths, max_pixels), len(paths))
        began = time.time_ns()
        places = [_place(path) for path in paths]
        read_only = {place[0] for place in places if place and _read_only(place[0])}
        places = [None if place and place[0] in read_only else place for place in places]
        signatures = [_signature(path) if place else None for path, place in zip(paths, places)]
        known = {folder: self._entries(folder) for folder in {p[0] for p in places if p}}
        results, unread = [None] * len(paths), []
        for i, (place, signature) in enumerate(zip(places, signatures)):
            entry = known[place[0]].get(place[1]) if place else None
            if signature is not None and entry is not None and tuple(entry[:5]) == signature:
                results[i] = _recalled(entry, max_pixels)
            else:
                unread.append(i)
        fresh = {}
        inspected = image_files.inspect_image_files(
            [paths[i] for i in unread], max_pixels, inspect=image_files.inspect_image_file_and_stat)
        for i, (found, info) in zip(unread, inspected):
            results[i] = found
            # Under the signature of the very file read (not of whatever the path named
            # when it was looked up: a folder may be swapped in between), taken before
            # the read, of a file settled by then: any write since, even during the
            # read, gave it another change time.
            signature = _of(info) if info is not None else None
            if (places[i] and signature is not None and found.problem is None
                    and max(signature[3], signature[4]) <= began - RACY_NS):
                fresh[i] = [*signature, found.sha1, found.orientation, found.width, found.height]
        self._remember(places, known, fresh, signatures)
        return Inspected(results, len(unread))

    def _entries(self, folder):
        """{name: entry} remembered for the photos of folder; malformed entries left out."""
        stored = self.memo.get(_key(folder))
        photos = stored.get("photos") if stored else None
        if not isinstance(photos, dict):
            return {}
        return {name: entry for name, entry in photos.items() if _well_formed(entry)}

    def _remember(self, places, known, fresh, signatures):
        """Store each folder's entries for this call's photos where they changed: those
        read and fit to remember, and those answered from the memo (still unchanged)."""
        wanted = {folder: {} for folder in known}
        for i, place in enumerate(places):
            if not place:
                continue
            folder, name = place
            if i in fresh:
                wanted[folder][name] = fresh[i]
            elif name in known[folder] and tuple(known[folder][name][:5]) == signatures[i]:
                wanted[folder][name] = known[folder][name]
        for folder, photos in wanted.items():
            if photos != known[folder] and len(photos) <= MAX_PHOTOS_PER_FOLDER:
                self.memo.put(_key(folder), {"photos": photos})


def _key(folder):
    return memo_lib.key_of("photos", folder)


def _place(path):
    """(absolute folder, name) of a local path; None for a remote one."""
    if "://" in path:
        return None
    return os.path.split(os.path.abspath(path))


def _signature(path):
    """(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of a local regular file this
    process can open (image_files.regular_file_stat), or None."""
    info = image_files.regular_file_stat(path)
    return None if info is None else _of(info)


def _of(info):
    """The signature in an os.stat_result."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _read_only(folder):
    """Whether folder is on a read-only file system (or that cannot be told). Squashfs,
    erofs and ISO 9660 keep no change time of their own (it is the modification time)
    and number their files in order: another image mounted in the same place can hold
    a changed photo with every number of the old one."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, ValueError):
        return True


def _well_formed(entry):
    if not (isinstance(entry, list) and len(entry) == 9):
        return False
    numbers = entry[:5] + entry[6:]
    return (all(type(n) is int and n >= 0 for n in numbers) and isinstance(entry[5], str)
            and _SHA1.fullmatch(entry[5]) is not None and 1 <= entry[6] <= 8
            and entry[7] > 0 and entry[8] > 0)


def _recalled(entry, max_pixels):
    """The ImageFile of a remembered photo, refused as inspect_image_bytes refuses it when it
    has more than max_pixels."""
    sha1, orientation, width, height = entry[5:]
    problem = image_files.too_many_pixels(width, height, max_pixels)
    if problem:
        return image_files.ImageFile(sha1, 1, problem)
    return image_files.ImageFile(sha1, orientation, None, width, height)
