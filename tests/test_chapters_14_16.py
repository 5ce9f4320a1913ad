"""Chapters 14 to 16 run as scripts on the CPU and teach what their prose says."""

from __future__ import annotations

import ast
import re

from conftest import EXAMPLES

SHARED_PLUMBING = ("worker", "free_port", "silence", "run_on_ranks")


def shared_functions(stem: str) -> dict[str, str]:
    """The source of the multi-process helpers, as ``ast`` sees it."""
    tree = ast.parse((EXAMPLES / f"{stem}.py").read_text())
    return {
        node.name: ast.dump(node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in SHARED_PLUMBING
    }


def test_ddp_and_fsdp_chapters_share_one_copy_of_the_plumbing():
    # Chapters 9 and 15 each carry the helpers (a downloaded chapter runs alone);
    # the two copies must stay the same code, so that a fix reaches both.
    ddp, fsdp = shared_functions("09_ddp_buffers"), shared_functions("15_fsdp2_buffers")
    assert sorted(ddp) == sorted(fsdp) == sorted(SHARED_PLUMBING)
    assert ddp == fsdp


def test_averaged_models(run_chapter):
    run = run_chapter(
        "14_averaged_models",
        "copied",
        "copied_too",
        "{label: row[0] for label, row in before.items()}",
        "{label: row[0] for label, row in after.items()}",
        "list(ema.state_dict())[:2]",
        "load_error is not None",
        "hand_ema.input_range.tolist()",
        "torch.allclose(torch_ema.module.input_range, scaled.input_range, rtol=1e-3)",
        "[hand_ema.output_scale.item(), torch_ema.module.output_scale.item()]",
        "torch.equal(fixed_ema.module.output_scale, fixed.output_scale)",
        "[hand_loss, torch_loss, fixed_loss]",
        "dropout_switched",
        "[m[1].num_batches_tracked.item() for m in"
        " (indexed, recipe_ema.module, copying_ema.module, swa_default.module)]",
        "[recipe_ema.module.index.tolist(), copying_ema.module.index.tolist()]",
        "[averaged_parameters[:3], docstring_error is not None]",
    )
    (copied, averaged, gaps_before, gaps_after, first_keys, load_failed, hand_range,
     torch_range_tracks, stale_scales, fixed_scale, losses, dropout_switched, counts,
     indexes, docstring) = run.facts  # fmt: skip
    # use_buffers=False copies the live model's buffers; True averages them.
    assert copied
    assert not averaged
    # No model's statistics match its weights until update_bn recomputes them.
    assert min(gaps_before.values()) > 1e-3
    assert max(gaps_after.values()) < 1e-4
    # The wrapper's state_dict has its own buffer and the module. prefix.
    assert first_keys == ["n_averaged", "module.0.weight"]
    assert load_failed
    # A state_dict() EMA never touches the non-persistent buffer ...
    assert hand_range == [1.0, 1.0, 1.0, 1.0]
    # ... AveragedModel averages it (toward a maximum that stopped growing).
    assert torch_range_tracks
    # Nobody carries a plain attribute; a registered buffer is carried.
    assert stale_scales == [1.0, 1.0]
    assert fixed_scale
    hand_loss, torch_loss, fixed_loss = losses
    assert fixed_loss < min(hand_loss, torch_loss) / 10
    assert "update_bn lowered the eval loss" in run.stdout
    # update_bn's model.train(was_training) switches a submodule kept in eval().
    assert dropout_switched
    # get_ema_multi_avg_fn truncates integer buffers; copying them keeps them.
    live_count, recipe_count, copying_count, swa_count = counts
    assert recipe_count < live_count == copying_count
    # The default (SWA) average keeps the count it copied at the first update.
    assert swa_count == 1 < live_count
    assert indexes[0] != list(range(8))
    assert indexes[1] == list(range(8))
    # AveragedModel's docstring passes the EMA function into `device`.
    assert docstring == [["self", "model", "device"], True]
    # The printed TypeError shows the first signature it lists, not a bare "one of:".
    assert "but expected one of:\n * (torch.device device = None" in run.stdout
    assert max(map(len, run.stdout.splitlines())) <= 100


def test_fsdp2_buffers(run_chapter):
    run = run_chapter(
        "15_fsdp2_buffers",
        "sorted({i['type'] for i in rank0['parameters'].values()})",
        "sorted({i['type'] for i in rank0['buffers'].values()})",
        "rank0['parameters']['inp.weight']['local_shape']",
        "rank0['inp.weight full'] == rank1['inp.weight full']",
        "rank0['running_mean'] == rank1['running_mean']",
        "'output_scale' in rank0['state_dict']",
        "[len(rank0['full state_dict']), len(rank1['full state_dict'])]",
        "rank0['averaged running_mean'] == rank1['averaged running_mean']",
        "rank0['bfloat16 error']",
        "rank0['forward dtypes']",
        "rank0['output dtype']",
        "[[r['output_scale at wrap'], r['output_scale after broadcast']]"
        " for r in reports]",
        "[r['samples seen'] for r in reports]",
        "(lambda rs: [(r['rank'], r['parameters']['inp.weight']['local_shape'],"
        " r['averaged running_mean'] == rs[0]['averaged running_mean'])"
        " for r in rs])(run_on_ranks(rank_report, world_size=3))",
    )
    (parameter_types, buffer_types, local_shape, weights_agree, buffers_agree,
     non_persistent_saved, full_sizes, averaged_agree, bf16_error, forward,
     output_dtype, scales, samples, three_ranks) = run.facts  # fmt: skip
    # fully_shard broadcasts no buffer at wrap time; a broadcast of our own does.
    assert scales == [[[0.5, 0.5], [0.5, 0.5]], [[1.5, 1.5], [0.5, 0.5]]]
    assert samples == [80.0, 80.0]  # the combination is weighted by these counts
    # The same job and plumbing run on three ranks: 6 rows shard as 2 per rank.
    assert three_ranks == [[0, [2, 4], True], [1, [2, 4], True], [2, [2, 4], True]]
    # The page's output fits 100 columns; its prose scopes what ran on the CPU only.
    assert max(len(line) for line in run.stdout.splitlines()) <= 100
    source = (EXAMPLES / "15_fsdp2_buffers.py").read_text()
    assert "Nothing had to be left out" not in source
    assert "# Mixed precision on a CPU mesh: parameters are cast" in source
    assert parameter_types == ["DTensor"]
    assert buffer_types == ["Tensor"]
    assert local_shape == [3, 4]  # half of the 6 rows on each of 2 ranks
    assert weights_agree
    assert not buffers_agree  # FSDP2 never synchronises buffers
    assert not non_persistent_saved
    assert full_sizes == [9, 0]  # the full state dict lives on rank 0 only
    assert averaged_agree
    assert bf16_error.startswith("RuntimeError: expected scalar type BFloat16")
    assert forward["inp"]["weight"] == "bfloat16"
    assert forward["norm"]["weight"] == forward["norm"]["running_mean"] == "float32"
    assert output_dtype == "float32"  # promoted by the float32 buffer


def test_fsdp2_sample_count_is_made_on_the_buffers_device():
    """NCCL refuses CPU tensors: the count all_reduced beside the buffers follows them."""
    tree = ast.parse((EXAMPLES / "15_fsdp2_buffers.py").read_text())
    calls = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["seen"]
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "torch.tensor"
    ]
    assert len(calls) == 1
    devices = [k.value for k in calls[0].keywords if k.arg == "device"]
    assert [ast.unparse(d) for d in devices] == ["norm.running_mean.device"]


def test_functional_buffers(run_chapter):
    run = run_chapter(
        "16_functional_buffers",
        "buffers['num_batches_tracked'].item()",
        "norm.num_batches_tracked.item()",
        "typo['runing_mean'].any().item()",
        "fresh.running_mean.any().item()",
        "strict_error is not None",
        "[as_tuple['steps'].item(), one_dict['steps'].item(),"
        " merged_source['steps'].item()]",
        "[as_tuple['total'].item(), one_dict['total'].item(),"
        " merged_source['total'].item()]",
        "fixed_state['steps'].item()",
        "[tied_out.tolist(), untied_out.tolist()]",
        "type(both_error).__name__",
        "[n for n, _ in tied.named_buffers(remove_duplicate=False)]",
        "[n for n, _ in outer.named_buffers(recurse=False)]",
        "'offset' in tied.state_dict()",
        "type(unstacked_error).__name__",
        "stacked_buffers['num_batches_tracked'].tolist()",
        "[patched.running_mean is None, torch.equal(eval_out, patched_out)]",
    )
    (passed_count, module_count, typo_used, module_updated, strict_raised, steps,
     totals, fixed_steps, tie_outputs, both_error, all_names, own_names,
     offset_saved, unstacked_error, stacked_counts, patched) = run.facts  # fmt: skip
    # In-place updates land in the passed tensors, not the module's.
    assert passed_count == 1
    assert module_count == 0
    # A misspelt key is ignored, and the module's own buffer used and updated.
    assert typo_used is False
    assert module_updated is True
    assert strict_raised
    # torch's message is printed with its own line breaks, not run together.
    assert re.search(
        r"^\s+Unexpected key\(s\): 'runing_mean'\.$", run.stdout, re.MULTILINE
    )
    # A reassigned buffer survives only in a single dict; in-place always.
    assert steps == [0, 1, 0]
    assert totals == [3.0, 3.0, 3.0]
    assert fixed_steps == 3
    assert tie_outputs == [[10.0, 10.0], [11.0, 11.0]]
    assert both_error == "ValueError"
    assert all_names == ["table", "alias", "offset"]
    assert own_names == ["scale"]
    assert offset_saved
    # vmap over BatchNorm in train(): unstacked buffers raise; stacked ones or
    # the patch that drops running statistics work.
    assert unstacked_error == "RuntimeError"
    assert stacked_counts == [1, 1]
    assert patched == [True, True]
    assert max(map(len, run.stdout.splitlines())) <= 100
