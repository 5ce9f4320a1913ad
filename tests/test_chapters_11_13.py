"""Chapters 11 to 13 run as scripts on the CPU and teach what their prose says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WIDTH = 100


def assert_fits(stdout: str) -> None:
    """No output line is wider than the page's code blocks (100 columns)."""
    wide = [line for line in stdout.splitlines() if len(line) > WIDTH]
    assert not wide, f"output lines wider than {WIDTH} columns: {wide}"


# Runs a chapter as sphinx-gallery does: code blocks (what lies between the
# "# %%" text blocks) in order, hidden blocks included, and the repr of a code
# block's last expression printed when it is not None (nor a Generator, which
# docs/conf.py tells sphinx-gallery to ignore).
PAGE_RUNNER = r"""
import ast, sys, types
path = sys.argv[1]
blocks, current, in_text = [], [], False
for line in open(path, encoding="utf-8").read().splitlines(keepends=True):
    if line.startswith("# %%"):
        blocks.append("".join(current))
        current, in_text = [], True
    elif in_text and line.startswith("#"):
        continue
    else:
        in_text = False
        current.append(line)
blocks.append("".join(current))
module = types.ModuleType("__main__")
module.__file__ = path
sys.modules["__main__"] = module  # as sphinx-gallery does; Dynamo looks it up
namespace = module.__dict__
for block in blocks:
    body = ast.parse(block).body
    if not body:
        continue
    last = body[-1]
    if isinstance(last, ast.Expr) and len(body) == 1 and isinstance(
        last.value, ast.Constant
    ):
        continue  # the title docstring: text, not code
    if isinstance(last, ast.Expr):
        body = body[:-1]
    exec(compile(ast.Module(body, []), path, "exec"), namespace)
    if isinstance(last, ast.Expr):
        value = eval(compile(ast.Expression(last.value), path, "eval"), namespace)
        if value is not None and "Generator" not in type(value).__name__:
            print(repr(value))
"""

HIDDEN = re.compile(
    r"^[ \t]*# sphinx_gallery_start_ignore.*?^[ \t]*# sphinx_gallery_end_ignore[^\n]*\n",
    re.DOTALL | re.MULTILINE,
)

# Lines that differ between any two runs: timings, the inductor cache's state,
# and what uninitialised memory held (with a wrapped message's continuation).
VARIES = re.compile(
    r"\d+\.\d+ seconds|on-disk cache: (hit|miss)|^  (rotary\.inv_freq|bias\.index) +min"
    r"|uninitialised memory"
)


def _normalised(stdout: str) -> list[str]:
    lines, masked = [], False
    for line in stdout.splitlines():
        if VARIES.search(line) or (masked and line.startswith("    ")):
            masked = True
            lines.append("<varies>")
        else:
            masked = False
            lines.append(line)
    return lines


@pytest.mark.parametrize(
    "stem",
    [
        "11_evolving_buffers",
        "12_meta_init",
        "13_compile_and_export",
        "14_averaged_models",
        "16_functional_buffers",
    ],
)
def test_download_prints_what_the_page_shows(stem, tmp_path):
    """Hidden checks print nothing (no stray repr) and draw no random numbers."""
    source = (EXAMPLES / f"{stem}.py").read_text(encoding="utf-8")
    download = tmp_path / "download" / f"{stem}.py"
    download.parent.mkdir()
    download.write_text(HIDDEN.sub("", source), encoding="utf-8")
    assert "sphinx_gallery_start_ignore" not in download.read_text(encoding="utf-8")
    env = {**os.environ, "GUIDE_DEVICE": "cpu", "PYTHONHASHSEED": "0"}
    outputs = []
    for command in (
        [sys.executable, "-c", PAGE_RUNNER, str(EXAMPLES / f"{stem}.py")],
        [sys.executable, str(download)],
    ):
        run = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert_fits(run.stdout)
        outputs.append(_normalised(run.stdout))
    page, downloaded = outputs
    assert page == downloaded


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
        "list(dcp_failures)",
        "str(dcp_failures[0])",
        "dcp_migrated",
        "(lambda e: (e.init_buffers(), str(e.position_ids.device))[1])"
        "(Embedding().to('meta'))",
        "issubclass(CheckpointException, Exception)",
    )
    (strict_failed, missing, unexpected, verdicts, v1_meta, v2_meta, norm_v2_loaded,
     migrated, counter, counter_kept, hooked, caller_untouched, dcp_ranks, dcp_error,
     dcp_migrated, rebuilt_on, checkpoint_exception_is_exception) = run.facts  # fmt: skip
    # init_buffers() follows the weights (here meta), not the default device.
    assert rebuilt_on == "meta"
    assert checkpoint_exception_is_exception is False  # except Exception misses it
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
    # torch.distributed.checkpoint.load never runs the migration (one process,
    # no process group); converted to a torch.save file, the checkpoint migrates.
    assert dcp_ranks == [0]
    assert dcp_error.startswith("Missing key in checkpoint state_dict: embed.")
    assert "rank 0: RuntimeError: Missing key in checkpoint state_dict" in run.stdout
    assert dcp_migrated
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout
    assert_fits(run.stdout)


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
        "positions_bf16.unique().numel()",
        "late_error.item()",
        "[cast_error.item(), recomputed_error.item()]",
        "[str(out_bf16.dtype), bf16_difference]",
        "str(float32_model.qkv.weight.dtype)",
        "[shares_again, copies_now]",
        "ties",
        "emptied.head.weight is emptied.embed.weight",
        "[torch.__future__.get_swap_module_params_on_conversion(), swapped_ties]",
        "too_long_refused",
        "[late_error.item(), cast_error.item()]",
    )
    (mismatched_keys, checkpoint_restored, shares, on_meta, assign_failed,
     index_rebuilt, fixed, assigned, distinct_bf16, late_error, cast_errors, bf16_run,
     assigned_dtype, remembered, ties, retied, swapping, too_long_refused,
     late_and_cast) = run.facts  # fmt: skip
    # Every load reports success; the checkpoint's tensors are restored.
    assert mismatched_keys == []
    assert all(checkpoint_restored)
    # The uninitialised buffers' statistics are printed, whatever they were.
    assert "after to_empty() and the load (uninitialised memory):" in run.stdout
    assert "\n  rotary.inv_freq  min " in run.stdout
    assert "\n  bias.index       min " in run.stdout
    # assign=True: the checkpoint's own tensors; meta buffers make forward raise.
    assert shares
    assert on_meta == ["bias.index", "rotary.inv_freq"]
    assert assign_failed
    assert "is not on the expected device" in run.stdout
    # Re-running the buffers' initialisation fixes both recipes.
    assert index_rebuilt
    assert fixed
    assert assigned
    # bfloat16: positions counted in bf16 collapse; Rotary counts in float32.
    assert distinct_bf16 < 1024
    assert late_error < 0.05
    cast_error, recomputed_error = cast_errors
    assert cast_error > 10 * recomputed_error  # a cast inv_freq drifts; recompute it
    assert bf16_run[0] == "torch.bfloat16"
    assert bf16_run[1] < 0.1  # Fix 1 works on a bf16 model
    # assign=True: the checkpoint's dtype, a flag in _metadata, untied weights.
    assert assigned_dtype == "torch.bfloat16"
    assert remembered == [True, True]
    assert ties == {"to_empty + load": False, "assign=True": False}
    assert retied
    # Untying holds with torch's default; swapping tensors keeps the tie.
    assert swapping == [False, {"to_empty + load": True, "assign=True": True}]
    # A sequence longer than the bias window is refused with a clear error.
    assert too_long_refused
    # bf16 input with float32 positions: far below a bf16-rounded inv_freq's error.
    assert late_and_cast[0] * 10 < late_and_cast[1]
    assert_fits(run.stdout)


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
        "{k: v[2] if isinstance(v[2], str) else 'trains' for k, v in training.items()}",
        "compiled_training_counts",
        "training_matches and buffers_match_in_training",
        "list(graphs_by_batch_size.items())",
        "scratch.k_cache.grad_fn is not None",
    )
    (inductor_counts, reassigned_counts, int_counts, limit, cache_counts, correct,
     in_place_kept, reassigned_kept, kinds, state_keys, constant_keys, steps,
     mutations, compile_seconds, shares_state, original_steps, training,
     training_counts, training_correct, graphs_by_size,
     unguarded_write_has_graph) = run.facts  # fmt: skip
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
    # Why the cache refuses keys that need a gradient: the write records a graph.
    assert unguarded_write_has_graph
    # The page claims nothing about which cache folder a docs build sets.
    assert (
        "the docs build sets" not in (EXAMPLES / "13_compile_and_export.py").read_text()
    )
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
    # Statistics updated without no_grad break training; with it, eager and
    # compiled (aot_eager) train alike, in one graph; new batch sizes recompile.
    assert training["RunningMeanWithGraph, eager mode"].startswith("step 2: ")
    # Compiled, the int64 counter fails first (torch 2.13): mean() of a Long tensor;
    # with a float counter compiled training fails at step 2, as eager does.
    assert training["RunningMeanWithGraph, aot_eager"].startswith("step 1: ")
    assert training["RunningMeanWithGraph, aot_eager"].endswith("Got: Long")
    freed = "step 2: RuntimeError: Trying to backward through the graph a second time"
    assert training["RunningMeanWithGraphFloatCounter, eager mode"].startswith(freed)
    assert training["RunningMeanWithGraphFloatCounter, aot_eager"].startswith(freed)
    assert training["RunningMean, eager mode"] == "trains"
    assert training["RunningMean, aot_eager"] == "trains"
    assert training_counts == one_graph
    assert training_correct
    assert graphs_by_size == [[8, 1], [3, 2], [5, 2], [1, 3]]
    assert "inductor's cache here: " in run.stdout
    assert_fits(run.stdout)
