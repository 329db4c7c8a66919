r"""Where a run's bottleneck vectors live: held in memory, or streamed from the packed store.

`choose` is retrain.py's memory check: it counts what the run holds
(memory_budget.estimate) against this machine's memory or --memory_limit,
and picks streaming when the vectors held would not fit and streamed they do
(or when --stream_bottlenecks asks for it), saying so in one log line.
Streamed, compute_bottlenecks gives the vectors back as a
packed_store.StoreVectors over the shards (stores.StoreOptions(hold_vectors=
False)), what run_data.Split.bottlenecks then holds: training reads them
through streamed_batches, evaluation in chunks.
"""

import dataclasses

from absl import logging

from retrain_suite import config as config_lib
from retrain_suite import memory_budget


def sizes_of(config, dimension, class_count, image_count, input_size, kept_images=0):
    """The memory_budget.Sizes of a run of config (vectors held in memory);
    arguments as choose's."""
    return memory_budget.Sizes(
        image_count=image_count, input_size=input_size,
        bottleneck_batch_size=config.module.bottleneck_batch_size, dimension=dimension,
        class_count=class_count, train_batch_size=config.training.train_batch_size,
        hidden_units=config.training.hidden_units,
        distorted=config_lib.distortions_from(config).any(),
        fine_tune_batch_size=config.fine_tuning.fine_tune_batch_size
        if config.fine_tuning.fine_tune_steps else 0,
        kept_images=kept_images,
    )


def choose(config, dimension, class_count, image_count, input_size, kept_images=0):
    """Whether the bottleneck vectors are streamed from the packed store (True) or held
    in memory (False); raise memory_budget.TooBig when the sizes asked for need more
    memory than this machine has, or than --memory_limit (what is counted:
    memory_budget.estimate), even streamed.

    Streamed when --stream_bottlenecks says so, or when the vectors held would not fit
    and streamed they do (logged in one line). Raises UsageError when they would not
    fit and a flag needs them in memory (config.needs_vectors_in_memory).

    dimension: bottleneck size D; input_size: (height, width) of the module;
    kept_images: decoded images the bottleneck pass keeps (job.kept_rows).
    """
    sizes = sizes_of(config, dimension, class_count, image_count, input_size, kept_images)
    limit = config.module.memory_limit_bytes()
    held = memory_budget.estimate(sizes)
    streaming = config.module.stream_bottlenecks or bool(
        memory_budget.shortfall(held.needed, limit))
    estimate = memory_budget.estimate(dataclasses.replace(sizes, streamed=True)) if streaming else held
    missing = memory_budget.shortfall(estimate.needed, limit)
    if missing:
        raise memory_budget.TooBig(
            f"--{estimate.largest}={getattr(sizes, estimate.largest)} needs {missing} "
            f"({dimension}-value bottlenecks, "
            f"{class_count} classes, {image_count} images). Lower it."
        )
    if not streaming:
        return False
    vectors = memory_budget.format_bytes(memory_budget.vectors_bytes(sizes))
    if config.module.stream_bottlenecks:
        logging.info("The bottleneck vectors (%s for %d images) are streamed from the packed "
                     "store (--stream_bottlenecks).", vectors, image_count)
        return True
    bound = (f"--memory_limit={memory_budget.format_bytes(limit)}" if limit is not None else
             f"this machine's {memory_budget.format_bytes(memory_budget.physical_memory())}")
    needing = config_lib.needs_vectors_in_memory(config)
    if needing:
        raise config_lib.UsageError(
            f"The bottleneck vectors of {image_count} images need {vectors} of memory "
            f"(the run about {memory_budget.format_bytes(held.needed)}), over {bound}, and "
            f"{needing} needs them all in memory; drop {needing}, or run it with more "
            "memory.")
    logging.info("The bottleneck vectors of %d images need %s of memory (the run about %s), "
                 "over %s: streaming them from the packed store.", image_count, vectors,
                 memory_budget.format_bytes(held.needed), bound)
    return True

