"""Chapter 22 runs as a script on the CPU and teaches what its prose says."""

from __future__ import annotations

import pytest

pytest.importorskip("accelerate")


def test_accelerate_big_models(run_chapter):
    run = run_chapter(
        "22_accelerate_big_models",
        "[(name, where, held) for name, _, where, held in placement(empty)]",
        "replaced, kept_marker",
        "still_on_meta",
        "[type(forward_error).__name__, type(dispatch_error).__name__]",
        "[held for *_, held in meta_rows]",
    )
    rows, (replaced, kept_marker), on_meta, errors, meta_held = run.facts
    # Default init_empty_weights: parameters on meta, buffers real on the CPU.
    assert [where for _, where, _ in rows] == ["meta"] * 3 + ["cpu"] * 3
    assert rows[4] == ["causal", "cpu", 4096 * 4096]
    # to_empty() replaced the computed tables, and the load did not refill them.
    assert replaced
    assert kept_marker
    # include_buffers=True: nothing held; the tables stay on meta and both loads fail.
    assert meta_held == [0] * 6
    assert on_meta == ["inv_freq", "causal"]
    assert errors == ["RuntimeError", "NotImplementedError"]
    assert "same output: True" in run.stdout
    assert "logit_scale on meta; same output: True" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 100
