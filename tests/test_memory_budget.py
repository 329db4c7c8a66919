"""memory_budget.py: the one estimate of what a run holds in memory, and the flag it
names when the sizes asked for cannot fit."""

from retrain_suite import memory_budget
from retrain_suite.bottleneck import batch_size as batch_size_lib


def test_the_estimate_counts_bottlenecks_batches_weights_and_decoded_images():
    sizes = memory_budget.Sizes(image_count=1000, input_size=(10, 20), bottleneck_batch_size=8,
                                dimension=64, class_count=5, train_batch_size=16)
    estimate = memory_budget.estimate(sizes)
    values = (1000 * 64                # the bottlenecks [N, D]
              + 2 * 16 * 64 + 3 * 16 * 5  # a training batch twice, its logits three times
              + 4 * (64 * 5 + 5)        # weights and biases, their gradients, two slots
              # decoded images: 128 waiting in blocks of 8 (batch_size.AHEAD_IMAGES), the
              # block the decoding thread holds, the pipeline's prefetched one, the batch
              # being put together and the one running
              + (128 + 8 + 8 + 8 + 8) * 10 * 20 * 3)
    assert estimate.needed == 4 * values


def test_a_measured_batch_size_counts_every_candidate_ahead_but_never_more_images_than_exist():
    measured = memory_budget.Sizes(image_count=10**6, input_size=(1, 1))
    # Blocks of 8 (the candidates' divisor): 128 waiting, one held by the thread, one
    # prefetched; then two batches of the largest candidate.
    held = 128 + 8 + 8 + 2 * max(batch_size_lib.CANDIDATES)
    assert memory_budget.estimate(measured).needed == 4 * held * 3
    few = memory_budget.Sizes(image_count=3, input_size=(1, 1))
    assert memory_budget.estimate(few).needed == 4 * 3 * 3


def test_the_largest_part_names_the_flag_to_lower():
    def largest(**fields):
        return memory_budget.estimate(memory_budget.Sizes(
            image_count=10, input_size=(4, 4), bottleneck_batch_size=1, dimension=8,
            class_count=2, train_batch_size=2, **fields)).largest

    assert largest() == "bottleneck_batch_size"
    assert largest(hidden_units=10**6) == "hidden_units"
    assert largest(fine_tune_batch_size=10**4) == "fine_tune_batch_size"


def test_a_shortfall_is_none_when_it_fits_and_says_both_sizes_when_not():
    assert memory_budget.shortfall(1) is None
    available = memory_budget.physical_memory()
    if available is not None:  # every Linux says; the check is of the text
        text = memory_budget.shortfall(2 * available)
        assert text.startswith("about ") and text.endswith(
            f"of memory; this machine has {memory_budget.format_bytes(available)}")


def test_the_estimate_counts_the_images_kept_for_the_check_and_names_no_flag_for_them():
    import dataclasses

    base = memory_budget.Sizes(image_count=1000, input_size=(10, 20), bottleneck_batch_size=8,
                               dimension=64, class_count=5, train_batch_size=16)
    kept = dataclasses.replace(base, kept_images=150)
    assert (memory_budget.estimate(kept).needed
            - memory_budget.estimate(base).needed) == 4 * 150 * 10 * 20 * 3
    # However many, the part the message names is a flag's, as Sizes has it.
    many = memory_budget.estimate(dataclasses.replace(base, kept_images=10**6))
    assert many.largest == memory_budget.estimate(base).largest
    assert hasattr(base, many.largest)
