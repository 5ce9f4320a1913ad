"""Chapters 11 to 13 run as scripts on the CPU and teach what their prose says."""

from __future__ import annotations


def test_evolving_buffers(run_chapter):
    run = run_chapter(
        "11_evolving_buffers",
        "strict_load_failed",
        "sorted(skipped.missing_keys)",
        "sorted(skipped.unexpected_keys)",
        "{p.key: p.safe_to_ignore for p in report}",
        "v1_checkpoint._metadata['embed']",
        "v2_checkpoint._metadata['embed']",
        "norm_v2_loaded",
        "statistic_migrated",
        "migrated_num_updates",
        "reloaded.embed.num_updates.item()",
        "torch.equal(library_model.embed.running_mean,"
        " v1_checkpoint['embed.running_avg'])",
        "'embed.running_avg' in v1_checkpoint",
    )
    (strict_failed, missing, unexpected, verdicts, v1_meta, v2_meta, norm_v2_loaded,
     migrated, counter, counter_kept, hooked, caller_untouched) = run.facts  # fmt: skip
    # The three changes break a strict load: renamed + added are missing,
    # non-persistent + renamed are unexpected.
    assert strict_failed
    assert missing == ["embed.num_updates", "embed.running_mean"]
    assert unexpected == ["embed.position_ids", "embed.running_avg"]
    assert verdicts == {
        "embed.running_mean": False,
        "embed.num_updates": False,
        "embed.position_ids": True,
        "embed.running_avg": False,
    }
    # torch records each module's _version; BatchNorm migrates only old ones.
    assert v1_meta == {"version": 1}
    assert v2_meta == {"version": 2}
    assert norm_v2_loaded is False
    assert "def _load_from_state_dict" in run.stdout  # torch's own source, printed
    # The fix loads v1 strictly, keeps a metadata-less v2 counter, and the
    # public pre-hook does the same for an unmodified class.
    assert migrated
    assert counter == 0
    assert counter_kept == 1
    assert hooked
    assert caller_untouched
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout


def test_meta_init(run_chapter):
    run = run_chapter(
        "12_meta_init",
        "result.missing_keys + result.unexpected_keys",
        "[restored[name] for name in checkpoint]",
        "shares_storage",
        "still_meta",
        "assign_forward_failed",
        "torch.equal(rebuilt.bias.index, reference.bias.index)",
        "torch.allclose(fixed_out, expected, rtol=1e-5, atol=1e-6)",
        "torch.allclose(assigned_out, expected, rtol=1e-5, atol=1e-6)",
    )
    (mismatched_keys, checkpoint_restored, shares, on_meta, assign_failed,
     index_rebuilt, fixed, assigned) = run.facts  # fmt: skip
    # Every load reports success; the checkpoint's tensors are restored.
    assert mismatched_keys == []
    assert all(checkpoint_restored)
    # The uninitialised buffers' statistics are printed, whatever they were.
    assert "rotary.inv_freq (uninitialised memory)" in run.stdout
    assert "bias.index      (uninitialised memory)" in run.stdout
    # assign=True: the checkpoint's own tensors; meta buffers make forward raise.
    assert shares
    assert on_meta == ["bias.index", "rotary.inv_freq"]
    assert assign_failed
    assert "is not on the expected device" in run.stdout
    # Re-running the buffers' initialisation fixes both recipes.
    assert index_rebuilt
    assert fixed
    assert assigned


def test_compile_and_export(run_chapter):
    run = run_chapter(
        "13_compile_and_export",
        "inductor_counts",
        "reassigned_counts",
        "int_counts",
        "torch._dynamo.config.recompile_limit",
        "cache_counts",
        "outputs_match and buffers_match",
        "held_in_place is compiled_model.mean",
        "held_reassigned is reassigned_model.mean",
        "kinds",
        "sorted(exported.state_dict)",
        "sorted(exported.constants)",
        "steps_after_three_calls",
        "mutations",
        "compile_seconds",
        "shares_state",
        "original_steps",
    )
    (inductor_counts, reassigned_counts, int_counts, limit, cache_counts, correct,
     in_place_kept, reassigned_kept, kinds, state_keys, constant_keys, steps,
     mutations, compile_seconds, shares_state, original_steps) = run.facts  # fmt: skip
    one_graph = {"graphs": 1, "graph breaks": 0, "gave up": 0}
    assert inductor_counts == one_graph
    assert reassigned_counts == one_graph
    assert correct
    assert in_place_kept
    assert not reassigned_kept
    # A Python int counter recompiles on every call up to the limit.
    assert int_counts["graphs"] == limit
    assert int_counts["gave up"] >= 1
    assert "hit config.recompile_limit" in run.stdout
    assert "graph break: Unsupported Tensor.item()" in run.stdout
    assert cache_counts == {"graphs": 2, "graph breaks": 0, "gave up": 0}
    # torch.export: three kinds of state in three places.
    assert kinds["steps"] == ["BUFFER", True]
    assert kinds["mask"] == ["BUFFER", False]
    assert kinds["scale"] == ["CONSTANT_TENSOR", None]
    assert state_keys == ["proj.bias", "proj.weight", "steps"]
    assert constant_keys == ["mask", "scale"]
    assert steps == 3
    assert mutations == ["steps"]
    # The exported program shares the original module's buffers.
    assert shares_state
    assert original_steps == 3
    assert (
        f"the first call (compiling, and one run) took {compile_seconds:.2f} seconds"
        in run.stdout
    )
    # The page never shows this build's file paths from torch's log.
    assert "examples/13_compile_and_export.py" not in run.stdout
