"""Chapters 20 and 21 run as scripts on the CPU and teach what their prose says."""

from __future__ import annotations


def test_ensembles_with_torch_func(run_chapter):
    run = run_chapter(
        "20_ensembles_with_torch_func",
        "list(buffers)",
        "[list(t.shape) for t in buffers.values()]",
        "[t.requires_grad for t in buffers.values()]",
        "all(t.is_leaf and t.requires_grad for t in params.values())",
        "params['0.weight'].data_ptr() != models[0][0].weight.data_ptr()",
        "torch.allclose(stacked_buffers['1.running_mean'],"
        " torch.stack([m[1].running_mean for m in loop_models]), atol=1e-6)",
        "stacked_buffers['1.num_batches_tracked'].tolist()",
        "[type(unbatched_error).__name__, 'track_running_stats' in str(unbatched_error)]",
        "[shared_buffers['1.num_batches_tracked'].item(),"
        " shared_buffers['1.running_mean'].count_nonzero().item()]",
        "[n for n, _ in patched.named_buffers()]",
        "patched[1].track_running_stats",
        "eval_is_train",
        "torch.allclose(patched_train, batched, rtol=1e-4, atol=1e-5)",
        "type(single_error).__name__",
        "passed_anyway['1.num_batches_tracked'].tolist()",
        "torch.allclose(params['0.weight'].grad, loop_grad, rtol=1e-4, atol=1e-6)",
        "[t.grad is None for t in stacked_buffers.values()]",
        "torch.allclose(from_stack, from_members, rtol=1e-4, atol=1e-5)",
    )
    (names, shapes, buffer_grads, leaves, copies, per_member, counters,
     unbatched, shared, patched_buffers, tracking, eval_is_train,
     patched_matches, single, passed_counters, own_grads, no_buffer_grads,
     rebuilt) = run.facts  # fmt: skip
    # stack_module_state stacks the buffers too: copies, no grad, members first.
    assert names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert shapes == [[3, 8], [3, 8], [3]]
    assert buffer_grads == [False, False, False]
    assert leaves
    assert copies
    # Under vmap in train mode, each member's update lands in its own slice.
    assert per_member
    assert counters == [2, 2, 2]  # two training-mode calls on stacked_buffers
    # Unbatched buffers raise, after counting the batch.
    assert unbatched == ["RuntimeError", True]
    assert shared == [1, 0]
    # replace_all_batch_norm_modules_: no buffers, nothing tracked, eval == train.
    assert patched_buffers == []
    assert tracking is False
    assert eval_is_train
    assert patched_matches
    assert single == "ValueError"
    assert passed_counters == [0, 0, 0]
    # Training: each member its own gradient; buffers none.
    assert own_grads
    assert no_buffer_grads == [True, True, True]
    assert rebuilt
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout
    assert "Batch norm got a batched tensor" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 100


def test_distributed_checkpoints(run_chapter):
    run = run_chapter(
        "21_distributed_checkpoints",
        "list(state)",
        "saved_keys == list(state)",
        "[name.endswith('.distcp') for name in written if name != '.metadata']",
        "[str(w.message) for w in caught]",
        "restored_before_set",
        "[fresh[2].scale.tolist(), fresh[2].window.tolist()]",
        "[type(missing_error).__name__, isinstance(missing_error, Exception)]",
        "[f'{type(c).__name__}: {c}' for c, _ in missing_error.failures.values()]",
        "newer[2].count.item()",
        "unexpected_warnings",
        "torch.equal(smaller[0].weight, model[0].weight)",
        "[str(c) for c, _ in old_error.failures.values()]",
        "load_calls",
        "hasattr(round_trip, '_metadata')",
        "calls",
        "current[2].scale.tolist()",
    )
    (keys, saved_same, data_files, warning_texts, in_place, restored,
     missing, missing_causes, partial_count, unexpected, smaller_loaded,
     old_causes, load_calls, has_metadata, calls, migrated) = run.facts  # fmt: skip
    # Persistent buffers are saved, the non-persistent window is not.
    assert "2.scale" in keys
    assert "2.window" not in keys
    assert "1.num_batches_tracked" in keys
    assert saved_same
    assert data_files == [True]  # one process: one data file beside .metadata
    # Without a process group DCP warns and works in a single process.
    assert any("single process" in text for text in warning_texts)
    # dcp.load fills the model's own tensors; the non-persistent buffer keeps
    # the fresh model's value.
    assert in_place
    assert restored == [[2.0, 2.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0]]
    # A missing key raises a CheckpointException that `except Exception` misses.
    assert missing == ["CheckpointException", False]
    assert missing_causes == [
        "RuntimeError: Missing key in checkpoint state_dict: 2.count."
    ]
    assert partial_count == 0
    # An unexpected key is ignored silently.
    assert unexpected == []
    assert smaller_loaded
    # Load hooks do not run in dcp.load; the renamed key is simply missing.
    assert old_causes == ["Missing key in checkpoint state_dict: 2.scale."]
    assert load_calls == ["load_state_dict"]  # from set_model_state_dict only
    assert has_metadata is False
    assert calls == ["migration (version None)", "pre-hook"]
    assert migrated == [3.0, 3.0, 3.0, 3.0]
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 100
