"""retrain_suite.dataset.copies: byte-identical images within a set, across sets and
across classes, and the report about them."""

from helpers import dataset_with_copies

from retrain_suite import dataset as dataset_lib
from retrain_suite import preparation


def test_copies_report_names_each_kind_and_the_evaluated_copy(tmp_path):
    image_dir, made = dataset_with_copies(tmp_path / "data")
    dataset = dataset_lib.build_dataset(image_dir, 30, 30)
    copies = dataset_lib.find_copies(dataset.images, preparation.content_hashes(dataset))
    assert (copies.images, copies.distinct, copies.copies) == (21, 18, 3)

    def paths(groups):
        return [sorted(i.path for i in group) for group in groups]

    assert paths(copies.within_set) == [sorted(made["within"][0])]
    assert paths(copies.across_sets) == [sorted(made["across_sets"][0])]
    assert paths(copies.across_classes) == [sorted(made["across_classes"][0])]
    report = dataset_lib.format_copies(copies).splitlines()
    assert report[0] == "Copies: 21 images, 18 distinct (3 are copies of another image)."
    test_copy, original = made["across_sets"][0]
    assert f"    testing {test_copy} is a copy of training {original}" in report
    assert "    " + " = ".join(sorted(made["across_classes"][0])) in report
    assert "    " + " = ".join(sorted(made["within"][0])) in report
    assert any("inflates the reported accuracy" in line for line in report)
    assert any("label noise" in line for line in report)


def test_copies_report_without_copies_is_one_line():
    images = [dataset_lib.Image(f"a/{n}.jpg", "a", 0, "training") for n in range(3)]
    copies = dataset_lib.find_copies(images, ["1", "2", None])
    assert dataset_lib.format_copies(copies) == "Copies: none; 2 images, all distinct."


def test_copies_report_names_five_groups_of_a_kind_then_counts(tmp_path):
    images = [dataset_lib.Image(f"a/{n}_{k}.jpg", "a", 0, "training") for n in range(7) for k in (0, 1)]
    copies = dataset_lib.find_copies(images, [str(n) for n in range(7) for _ in (0, 1)])
    report = dataset_lib.format_copies(copies).splitlines()
    assert report[1].startswith("  7 within one class and set")
    assert report[2:] == [f"    a/{n}_0.jpg = a/{n}_1.jpg" for n in range(5)] + ["    ... and 2 more"]


def test_a_large_group_of_copies_is_one_line_with_its_size_by_set():
    splits = ["training"] * 5 + ["validation"] + ["testing"] * 2
    images = [dataset_lib.Image(f"a/{n}.jpg", "a", 0, split) for n, split in enumerate(splits)]
    copies = dataset_lib.find_copies(images, ["same"] * len(images))
    assert dataset_lib.format_copies(copies).splitlines()[2] == (
        "    validation a/5.jpg is a copy of training a/0.jpg "
        "(8 images: 5 training, 1 validation, 2 testing)"
    )
