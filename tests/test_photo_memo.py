"""retrain_suite.photo_memo: a rerun reads no unchanged photo, and never answers for a
changed one."""

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, make_dataset, synthetic_image, write_image

from retrain_suite import photo_memo
from retrain_suite.bottleneck import compute
from retrain_suite.images import files as image_files


@pytest.fixture
def photos(tmp_path):
    """12 photos in 3 class folders. -> sorted full paths."""
    root = make_dataset(tmp_path / "data", per_class=4)
    return sorted(glob.glob(os.path.join(root, "*", "*")))


@pytest.fixture
def settled(monkeypatch):
    """Photos written just now count as settled (no racy margin): tests need not wait."""
    monkeypatch.setattr(photo_memo, "RACY_NS", 0)


@pytest.fixture
def reads(monkeypatch):
    """The paths the memo reads (image_files.inspect_image_file_and_stat), in a list."""
    read = []
    real = image_files.inspect_image_file_and_stat

    def counted(path, *args, **kwargs):
        read.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(image_files, "inspect_image_file_and_stat", counted)
    return read


def memo_in(tmp_path):
    return photo_memo.PhotoMemo.of_cache(str(tmp_path / "cache"))


def test_unchanged_photos_are_answered_without_being_read(tmp_path, photos, settled, reads):
    fresh = image_files.inspect_image_files(photos)
    reads.clear()
    first = memo_in(tmp_path).inspect(photos)
    assert (first.files, first.read, len(reads)) == (fresh, 12, 12)
    reads.clear()
    second = memo_in(tmp_path).inspect(photos)
    assert (second.files, second.read, reads) == (fresh, 0, [])
    assert all(f.problem is None and f.width > 0 for f in second.files)
    # One entry per folder of photos, nothing when the cache is remote.
    assert len(os.listdir(tmp_path / "cache" / "photos")) == 3
    assert photo_memo.PhotoMemo.of_cache("gs://bucket/cache").inspect(photos).read == 12


def rewrite_same_size_and_times(path):
    """Change one byte of a JPEG in place (its JFIF header's density: it still decodes),
    keeping its size and modification time."""
    before = os.stat(path)
    data = bytearray(open(path, "rb").read())
    assert data[6:11] == b"JFIF\0"
    data[15] ^= 1
    time.sleep(0.05)  # past the file system clock's tick, as any later write is
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def test_a_photo_rewritten_with_its_old_size_and_times_is_read_again(
        tmp_path, photos, settled, reads):
    first = memo_in(tmp_path).inspect(photos)
    changed = photos[4]
    rewrite_same_size_and_times(changed)
    reads.clear()
    again = memo_in(tmp_path).inspect(photos)
    assert (again.read, reads) == (1, [changed])
    assert again.files == image_files.inspect_image_files(photos)
    assert again.files[4].sha1 != first.files[4].sha1
    # The new content is remembered in turn.
    reads.clear()
    assert (memo_in(tmp_path).inspect(photos).read, reads) == (0, [])


def test_a_photo_replaced_or_removed_is_read_again(tmp_path, photos, settled, reads):
    memo_in(tmp_path).inspect(photos)
    replaced, removed = photos[0], photos[1]
    other = str(tmp_path / "other.png")
    write_image(other, synthetic_image((1, 2, 3), "solid", 20, 20, np.random.RandomState(1)), "PNG")
    os.replace(other, replaced)
    os.unlink(removed)
    reads.clear()
    again = memo_in(tmp_path).inspect(photos)
    assert sorted(reads) == sorted([replaced, removed]) and again.read == 2
    assert again.files[0] == image_files.inspect_image_file(replaced)
    assert again.files[1].problem == image_files.MISSING


def test_a_photo_written_just_before_its_read_is_not_remembered(tmp_path, photos, reads):
    # Its file system's clock has not moved on: a write in the same tick would leave it
    # the same size and times. Read again next time, until it has settled.
    memo_in(tmp_path).inspect(photos)
    reads.clear()
    assert memo_in(tmp_path).inspect(photos).read == 12 and len(reads) == 12


def test_the_pixel_limit_applies_to_remembered_photos(tmp_path, photos, settled):
    memo_in(tmp_path).inspect(photos)
    limit = 45 * 40
    recalled = memo_in(tmp_path).inspect(photos, limit)
    assert recalled.read == 0
    assert recalled.files == image_files.inspect_image_files(photos, limit)
    assert any(f.problem and f.problem.startswith("too large") for f in recalled.files)
    assert any(f.problem is None for f in recalled.files)


def test_files_refused_for_what_they_hold_are_read_every_time(tmp_path, photos, settled, reads):
    empty, text = photos[0], photos[1]
    open(empty, "wb").close()
    with open(text, "wb") as f:
        f.write(b"not an image at all")
    memo_in(tmp_path).inspect(photos)
    reads.clear()
    again = memo_in(tmp_path).inspect(photos)
    assert sorted(reads) == sorted([empty, text])
    assert again.files[0].problem == "empty file"
    assert again.files[1].problem.startswith("not a decodable image")


@pytest.mark.parametrize("damage", ["not json", "photos not a dict", "bad entries"])
def test_a_damaged_memo_is_read_through(tmp_path, photos, settled, reads, damage):
    memo_in(tmp_path).inspect(photos)
    for path in glob.glob(str(tmp_path / "cache" / "photos" / "*.json")):
        entry = json.load(open(path))
        if damage == "not json":
            text = "{not json"
        elif damage == "photos not a dict":
            text = json.dumps({"photos": [1, 2]})
        else:
            bad = {}
            for i, (name, value) in enumerate(entry["photos"].items()):
                value = list(value)
                value[[5, 6, 7, 2][i % 4]] = ["0" * 39, 9, -1, "12"][i % 4]
                bad[name] = value
            text = json.dumps({"photos": bad})
        with open(path, "w") as f:
            f.write(text)
    reads.clear()
    again = memo_in(tmp_path).inspect(photos)
    assert (again.files, again.read) == (image_files.inspect_image_files(photos), 12)
    reads.clear()
    assert memo_in(tmp_path).inspect(photos).read == 0  # written whole again


def test_names_that_are_not_utf8_are_remembered(tmp_path, settled, reads):
    folder = os.fsencode(str(tmp_path / "data" / "cls"))
    os.makedirs(folder)
    path = os.fsdecode(os.path.join(folder, b"\xff\xfe photo.png"))
    write_image(path, synthetic_image((9, 9, 9), "solid", 12, 12, np.random.RandomState(0)), "PNG")
    first = memo_in(tmp_path).inspect([path])
    reads.clear()
    second = memo_in(tmp_path).inspect([path])
    assert (second.read, reads, second.files) == (0, [], first.files)
    assert first.files[0].problem is None


def test_a_rerun_of_the_bottlenecks_reads_no_photo_and_recomputes_a_changed_one(
        tmp_path, tiny_module, photos, settled, reads):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    first = compute.compute_bottlenecks(photos, tiny_module, bottleneck_dir)
    reads.clear()
    second = compute.compute_bottlenecks(photos, tiny_module, bottleneck_dir)
    assert (second.computed, second.reused, reads) == (0, 12, [])
    np.testing.assert_array_equal(second.vectors, first.vectors)
    changed = photos[6]
    rewrite_same_size_and_times(changed)
    third = compute.compute_bottlenecks(photos, tiny_module, bottleneck_dir)
    assert (third.computed, third.reused) == (1, 11)
    assert third.contents[6] == image_files.inspect_image_file(changed).sha1 != first.contents[6]


def test_a_photo_changed_while_it_was_read_is_not_remembered(tmp_path, photos, settled,
                                                            monkeypatch):
    changing = photos[2]
    real = image_files.inspect_image_file_and_stat

    def read_then_changed(path, *args, **kwargs):
        found = real(path, *args, **kwargs)
        if path == changing:
            rewrite_same_size_and_times(path)  # after the read, before the stat that follows
        return found

    monkeypatch.setattr(image_files, "inspect_image_file_and_stat", read_then_changed)
    memo_in(tmp_path).inspect(photos)
    monkeypatch.setattr(image_files, "inspect_image_file_and_stat", real)
    again = memo_in(tmp_path).inspect(photos)
    assert again.read == 1
    assert again.files[2] == image_files.inspect_image_file(changing)


def test_a_photo_this_process_cannot_open_is_not_answered_from_the_memo(
        tmp_path, photos, settled):
    # Taken on the open file (as NFS revalidates on open): a photo remembered and
    # unchanged since, but which this process cannot open, is read, and refused.
    locked = photos[3]
    os.chmod(locked, 0)  # before it is remembered, by root, who reads it anyway
    assert memo_in(tmp_path).inspect(photos).files[3].problem is None
    script = ("import sys\nfrom retrain_suite import photo_memo\nphoto_memo.RACY_NS = 0\n"
              "done = photo_memo.PhotoMemo.of_cache(sys.argv[1]).inspect(sys.argv[2:])\n"
              "print(done.read)\nprint(done.files[3].problem)\n")
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable]
    done = subprocess.run([*unprivileged, "-c", script, str(tmp_path / "cache"), *photos],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    read, problem = done.stdout.splitlines()
    assert read == "1" and problem.startswith("cannot be read") and "Permission denied" in problem


def test_a_folder_swapped_while_its_photos_are_read_leaves_no_wrong_answer(
        tmp_path, photos, settled, monkeypatch):
    # Each photo's content is remembered under the file that was read, not under what
    # its path named when the memo was looked up: here the class folder is swapped for
    # another (the same names, other photos) just before one of them is read.
    folder = os.path.dirname(photos[0])
    other = tmp_path / "other"
    for i, path in enumerate(p for p in photos if os.path.dirname(p) == folder):
        pixels = synthetic_image((250, 10 * i, 0), "checker", 30, 30, np.random.RandomState(i))
        write_image(str(other / os.path.basename(path)), pixels,
                    "PNG" if path.endswith(".png") else "JPEG")
    real = image_files.inspect_image_file_and_stat
    swapped = []

    def read_after_a_swap(path, *args, **kwargs):
        if path == photos[0] and not swapped:
            os.rename(folder, str(tmp_path / "kept"))
            os.rename(str(other), folder)
            swapped.append(True)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(image_files, "inspect_image_files",
                        lambda paths, max_pixels, inspect=None: [
                            read_after_a_swap(p, max_pixels) for p in paths])
    memo_in(tmp_path).inspect(photos)
    monkeypatch.undo()
    os.rename(folder, str(other))  # swapped back: the photos first looked up
    os.rename(str(tmp_path / "kept"), folder)
    assert memo_in(tmp_path).inspect(photos).files == image_files.inspect_image_files(photos)


def test_photos_on_a_read_only_file_system_are_read_every_time(
        tmp_path, photos, settled, reads, monkeypatch):
    assert not photo_memo._read_only(str(tmp_path))
    monkeypatch.setattr(photo_memo, "_read_only", lambda folder: True)
    memo_in(tmp_path).inspect(photos)
    reads.clear()
    again = memo_in(tmp_path).inspect(photos)
    assert again.read == 12 and again.files == image_files.inspect_image_files(photos)
    assert not (tmp_path / "cache" / "photos").exists()
