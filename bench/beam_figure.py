"""The Beam figure: the cache fill as a Beam pipeline against the in-process fill.

Each of --beam_rounds rounds runs, one after the other on the same photos, the
in-process fill (compute.compute_bottlenecks), the Beam fill on the in-process
runner (FnApiRunner) and on the multi-process direct runner with 2 workers, each
into a store or cache of its own. A rate is images / wall seconds of the whole
fill (listing, hashing, decoding, the module, writing), the module's load and
freeze included where a run pays for it (the 2 worker processes load it each
time; the in-process runs share the process's loaded module after the first).
Each figure is its best round. The Beam stores' vectors are compared with the
in-process fill's, bit for bit; the log says, per round and runner, how many
are missing, extra or differ (the first few of each) and the largest
difference.
"""

import time

import numpy as np
from absl import logging

from retrain_suite.bottleneck import beam_fill, compute, packed_store

RUNNERS = (
    ("in-process runner (FnApiRunner)", []),
    ("2-worker multi-process runner", ["--direct_running_mode=multi_processing",
                                       "--direct_num_workers=2"]),
)


def stored(bottleneck_dir, identity):
    """{content (hex SHA-1): float32 [D] vector} of the packed store of identity (a
    packed_store.StoreIdentity) under bottleneck_dir."""
    index = packed_store.PackedStore(bottleneck_dir, identity).index()
    _, positions = index.entries()
    # contents(), not the keys' .hex(): a key out of numpy loses its trailing zero bytes,
    # and one of the 160 photos' SHA-1s ends in one (it read as missing, and as extra).
    return dict(zip(index.contents(), index.read(positions)))


def compare(got, reference):
    """({content: vector} of a Beam store, the in-process fill's) -> (bit-identical?, a line
    saying how they differ: missing and extra keys, keys whose vectors differ, the largest
    absolute difference)."""
    missing, extra = sorted(set(reference) - set(got)), sorted(set(got) - set(reference))
    differ = sorted(c for c in set(got) & set(reference)
                    if not np.array_equal(got[c], reference[c]))
    largest = max((float(np.max(np.abs(got[c].astype(np.float64) - reference[c])))
                   for c in differ), default=0.0)
    same = not (missing or extra or differ)
    report = (f"{len(reference)} vectors, {len(missing)} missing {missing[:5]}, {len(extra)} "
              f"extra {extra[:5]}, {len(differ)} differ {differ[:5]}, largest difference "
              f"{largest:.3g}")
    return same, ("identical: " if same else "DIFFER: ") + report


def beam_rows(bench):
    """Add the Beam rows to bench (a figures.Bench)."""
    paths = bench.photos()
    image_dir = bench.folder("photos")
    batch = bench.settings.batch_size or compute.batch_size_lib.DEFAULT_BATCH_SIZE
    ours, beams, identical = [], {name: [] for name, _ in RUNNERS}, {}
    reference = None
    for number in range(bench.settings.beam_rounds):
        began = time.monotonic()
        result = compute.compute_bottlenecks(paths, bench.handle,
                                             bench.folder("beam", f"ours{number}"), batch_size=batch)
        ours.append(len(paths) / (time.monotonic() - began))
        if reference is None:  # the vectors of the images computed (none of the skipped)
            reference = {content: vector for n, (content, vector)
                         in enumerate(zip(result.contents, result.vectors))
                         if n not in result.skipped}
        for name, args in RUNNERS:
            fill = beam_fill.Fill(image_dir, bench.handle,
                                  bench.folder("beam", f"{len(beams[name])}{name[:2]}"),
                                  batch_size=batch)
            runner, options = beam_fill.runner_and_options("FnApiRunner", args)
            began = time.monotonic()
            beam_fill.fill_store(fill, runner, options)
            beams[name].append(len(paths) / (time.monotonic() - began))
            got = stored(fill.bottleneck_dir, beam_fill.store_identity(fill))
            same, report = compare(got, reference)
            logging.info("Beam round %d, %s: %s", number + 1, name, report)
            identical[name] = identical.get(name, True) and same
        bench.log_round("Beam", number, {"in-process fill": ours[-1],
                                         **{name: rates[-1] for name, rates in beams.items()}})
    best = max(ours)
    for number, (name, _) in zip(("12a.", "12b."), RUNNERS):
        rate = max(beams[name])
        same = "identical" if identical[name] else "**differ**"
        bench.add(f"{number} Beam fill, {name}: images/s (vectors {same})", f"{rate:.2f}",
                  f"{best:.2f} in-process fill, batch {batch}", rate / best,
                  ">= 0.8x" if name.startswith("in-process") else "vectors identical",
                  rate / best >= 0.8 if name.startswith("in-process") else identical[name])
