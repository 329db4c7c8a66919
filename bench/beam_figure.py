"""The Beam figure: the cache fill as a Beam pipeline against the in-process fill.

Each of --beam_rounds rounds runs, one after the other on the same photos, the
in-process fill (compute.compute_bottlenecks), the Beam fill on the in-process
runner (FnApiRunner) and on the multi-process direct runner with 2 workers, each
into a store or cache of its own. A rate is images / wall seconds of the whole
fill (listing, hashing, decoding, the module, writing), the module's load and
freeze included where a run pays for it (the 2 worker processes load it each
time; the in-process runs share the process's loaded module after the first).
Each figure is its best round. The Beam stores' vectors are compared with the
in-process fill's, bit for bit.
"""

import time

import numpy as np

from retrain_suite.bottleneck import beam_fill, compute, packed_store

RUNNERS = (
    ("in-process runner (FnApiRunner)", []),
    ("2-worker multi-process runner", ["--direct_running_mode=multi_processing",
                                       "--direct_num_workers=2"]),
)


def _stored(fill):
    """{content: vector} of a fill's store."""
    index = packed_store.PackedStore(fill.bottleneck_dir, beam_fill.store_identity(fill)).index()
    keys, positions = index.entries()
    return dict(zip((k.hex() for k in keys), index.read(positions)))


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
            got = _stored(fill)
            identical[name] = identical.get(name, True) and set(got) == set(reference) and all(
                np.array_equal(got[c], v) for c, v in reference.items())
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
