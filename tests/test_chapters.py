"""Each chapter runs as a script on the CPU and teaches what its prose says."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLES, ROOT, TESTS

BOOK_FIRST_ROW = [-0.4519, 0.2216]  # the book's first context vector, seed 123


def test_every_chapter_is_tested():
    # Chapter tests live in tests/test_chapters*.py, one run_chapter("NN_name")
    # call per chapter; every chapter script must have one.
    sources = "".join(p.read_text() for p in TESTS.glob("test_chapters*.py"))
    chapters = {path.stem for path in EXAMPLES.glob("[0-9][0-9]_*.py")}
    untested = {stem for stem in chapters if f'"{stem}"' not in sources}
    assert not untested, f"untested chapters: {sorted(untested)}"


def test_mask_left_behind(run_chapter):
    run = run_chapter(
        "01_mask_left_behind",
        "cpu_context_vecs[0, 0].tolist()",
        "torch.equal(cpu_context_vecs[0], cpu_context_vecs[1])",
        "forward_failed",
        "sorted({p.device.type for p in meta_copy.parameters()})",
        "meta_copy.mask.device.type",
        "torch.equal(context_vecs.cpu(), cpu_context_vecs)",
        "BOOK_CONTEXT_VECS.tolist()",
        "cpu_context_vecs[0].tolist()",
        "str(weights_on) == str(mask_on)",
        "float32_eps",
        "meta_forward_error is None",
        "[str(halved.mask.dtype), str(half_out.dtype)]",
    )
    (first_row, halves_equal, failed, meta_param_devices, meta_mask, fixed,
     book_rows, rows, same_device, eps, meta_forward_ok,
     half_dtypes) = run.facts  # fmt: skip
    # The tolerance sentence is torch's: float32's epsilon is 1.19e-07, not 1e-6,
    # and the check uses assert_close's defaults (rtol 1.3e-6, about 11 epsilons).
    assert eps == pytest.approx(1.1920928955078125e-07)
    assert "torch.finfo(torch.float32).eps: 1.19e-07" in run.stdout
    assert "about 1e-6" not in (EXAMPLES / "01_mask_left_behind.py").read_text()
    # The meta dry run shows where tensors went but raises nothing.
    assert meta_forward_ok
    assert "forward on meta, mask on cpu: no error" in run.stdout
    # .half() leaves the plain float mask float32, and the forward still runs.
    assert half_dtypes == ["torch.float32", "torch.float16"]
    assert first_row == pytest.approx(BOOK_FIRST_ROW, abs=5e-5)
    assert book_rows[0] == pytest.approx(BOOK_FIRST_ROW)  # the chapter checks the book
    for row, book_row in zip(rows, book_rows, strict=True):
        assert row == pytest.approx(book_row, abs=5e-5)
    assert halves_equal
    # On the CPU nothing fails, and the page says why from the devices it compared.
    assert failed is False
    assert same_device
    assert "share a device, and masked_fill_ accepted them" in run.stdout
    # The cause is still shown: .to("meta") moves the weights but not the mask.
    assert meta_param_devices == ["meta"]
    assert meta_mask == "cpu"
    assert "masked_fill_(mask, value)" in run.stdout
    assert fixed  # on the CPU the fixed module's result is identical bit for bit
    assert "identical bit for bit: True" in run.stdout
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout


def test_register_buffer(run_chapter):
    run = run_chapter(
        "02_register_buffer",
        "[n for n, _ in ca_with_buffer.named_buffers()]",
        "[n for n, _ in ca_with_buffer.named_parameters()]",
        "[n for n, _ in ca_without_buffer.named_buffers()]",
        "all(torch.equal(a, b) for a, b in zip(ca_without_buffer.parameters(),"
        " ca_with_buffer.parameters()))",
        "torch.equal(buffered_out, unbuffered_out)",
        "buffered_out[0, 0].tolist()",
        "ca_with_buffer.mask.device == ca_with_buffer.W_query.weight.device",
        "ca_with_buffer.mask.requires_grad",
        "scaled.scale.grad.tolist()",
        "list(scaled.parameters())",
        "close_to_cpu",
        "{label: [b.is_leaf, b is r, g if g is None or isinstance(g, str)"
        " else g.tolist()] for label, (b, r, g, _) in results.items()}",
        "double_registered.grad.tolist()",
    )
    (buffers, parameters, unbuffered_buffers, same_weights, equal, first_row,
     mask_follows, mask_grad, buffer_grad, scaled_parameters,
     close_to_cpu, conversions, registered_grad) = run.facts  # fmt: skip
    # A requires_grad buffer converted outside no_grad is a non-leaf whose .grad
    # stays None; the tensor registered before the cast gets the gradient.
    assert conversions == {
        ".to('cpu') (already there)": [True, True, [3.0, 3.0]],
        ".double()": [False, False, None],
        ".to('meta')": [False, False, "no backward on meta"],
        ".double() under no_grad": [True, False, None],
    }
    assert registered_grad == [3.0, 3.0]
    assert "about 1e-6" not in (EXAMPLES / "02_register_buffer.py").read_text()
    assert buffers == ["mask"]
    assert parameters == ["W_query.weight", "W_key.weight", "W_value.weight"]
    assert unbuffered_buffers == []
    assert same_weights
    assert equal
    assert first_row == pytest.approx(BOOK_FIRST_ROW, abs=5e-5)
    assert mask_follows
    assert mask_grad is False
    # No gradient is the default, not a rule: a buffer that requires grad gets one,
    # and the optimizer still never sees it.
    assert buffer_grad == [3.0, 3.0]
    assert scaled_parameters == []
    assert close_to_cpu


def test_state_dict(run_chapter):
    run = run_chapter(
        "03_state_dict",
        "sorted(set(with_keys) - set(without_keys))",
        "(loaded_with.mask == 2.0).sum().item()",
        "(loaded_without.mask == 2.0).sum().item()",
        "(loaded_without.mask == 1.0).sum().item()",
        "checkpoint_dir.exists()",
        "with_keys",
        "tuple(without_result)",
        "weights_only_status",
    )
    (only_buffered, twos_with, twos_without, ones_without, checkpoints_left,
     with_keys, without_result, weights_only_status) = run.facts  # fmt: skip
    # weights_only=True had flaws before 2.6.0 and 2.10.0; the page says where the
    # torch that ran it stands (computed from torch.__version__).
    assert weights_only_status == {"CVE-2025-32434": "fixed", "CVE-2026-24747": "fixed"}
    assert "CVE-2026-24747 (memory corruption in its unpickler; fixed in 2.10.0)" in (
        run.stdout
    )
    # Each module's own entries come before its submodules': the buffer first.
    assert with_keys == ["mask", "W_query.weight", "W_key.weight", "W_value.weight"]
    assert without_result == [[], []]  # the plain attribute is lost silently
    assert only_buffered == ["mask"]
    assert twos_with == 15  # the 6x6 upper triangle, all changed to 2 and restored
    assert twos_without == 0  # the change to a plain attribute was not saved
    assert ones_without == 15
    assert not checkpoints_left  # the temporary directory is gone
    assert "change survived, with buffer:    True" in run.stdout


def test_find_the_stray(run_chapter):
    run = run_chapter(
        "04_find_the_stray",
        "[s.record.name for s in pb.find_strays(attention)]",
        "sorted(s.record.name for s in strays)",
        "len(pb.find_strays(fixed))",
        "str(pb.check_devices(fixed, target))",
        "[(r.key, r.problem.value, r.kind.value, r.safe_to_ignore) for r in report]",
        "str(target)",
        "(prefix_report.prefix_fix.prefix, prefix_report.prefix_fix.action)",
        "[[p.requires_grad for p in cache_as_parameters],"
        " list(cache_as_parameters.state_dict())]",
    )
    (
        attention_strays,
        model_strays,
        fixed_strays,
        fixed_device,
        report,
        target,
        prefix,
        parameter_list,
    ) = run.facts
    assert attention_strays == ["mask"]
    assert model_strays == sorted(
        [
            *(
                f"blocks.{i}.attn.{name}"
                for i in (0, 1)
                for name in ("mask", "rotary.cos", "rotary.sin")
            ),
            "blocks.0.attn.kv_cache[0]",
            "blocks.0.attn.kv_cache[1]",
        ]
    )
    assert fixed_strays == 0
    assert fixed_device == target == "meta"  # the CPU build checks against meta
    assert "DeviceMismatchError: 8 of" in run.stdout
    assert (
        "blocks.1.attn.rotary.sin (plain attribute) is on cpu, expected meta"
        in run.stdout
    )
    # nn.ParameterList would make the cache trainable and saved: the page shows it.
    assert parameter_list == [[True, True], ["0", "1"]]
    # The library's floor is stated; the meta-init story is left to chapter 12.
    source = (EXAMPLES / "04_find_the_stray.py").read_text()
    assert "torch>=2.13" in source
    assert "12_meta_init" in source
    assert "RotaryAttention" not in source
    assert report == [["mask", "unexpected", "non-persistent buffer", True]]
    assert "<All keys matched successfully>" in run.stdout
    assert prefix == ["module.", "strip"]
    assert (
        "consume_prefix_in_state_dict_if_present(state_dict, 'module.')" in run.stdout
    )


def test_non_persistent_buffers(run_chapter):
    run = run_chapter(
        "05_non_persistent_buffers",
        "list(attention.state_dict())",
        "sorted(n for n, _ in attention.named_buffers())",
        "persistent_size / non_persistent_size",
        "tuple(long_np.mask.shape)",
        "weights_loaded",
        "[n for n, _ in slot.named_buffers()]",
        "strict_false_error",
        "skipped_unexpected.unexpected_keys",
        "skipped_missing.missing_keys",
        "foreign_error",
        "sorted(NO_LONGER_SAVED)",
    )
    (keys, buffers, size_ratio, long_mask, weights_loaded, slot_buffers,
     strict_false_error, skipped_unexpected, skipped_missing, foreign_error,
     dropped_by_name) = run.facts  # fmt: skip
    # Keys are dropped by name, so a foreign key still fails the strict load.
    assert dropped_by_name == ["mask"]
    assert 'Unexpected key(s) in state_dict: "proj.weight"' in foreign_error
    # strict=False forgives missing and unexpected keys, never a shape mismatch.
    assert "size mismatch for mask" in strict_false_error
    assert skipped_unexpected == ["mask"]
    assert skipped_missing == ["mask"]
    assert keys == ["qkv.weight"]
    assert buffers == ["angles", "mask"]
    assert size_ratio > 100  # the masks dwarf the weights
    assert long_mask == [32, 32]
    assert "size mismatch for mask" in run.stdout
    assert 'Unexpected key(s) in state_dict: "mask"' in run.stdout
    assert 'Missing key(s) in state_dict: "mask"' in run.stdout
    assert "weight copied anyway: True" in run.stdout  # a failed strict load half-loads
    assert weights_loaded is False  # strict=False hid a missing weight
    assert "dropped: ['mask']" in run.stdout
    assert slot_buffers == ["cache"]


def test_dtypes_and_memory(run_chapter):
    run = run_chapter(
        "06_dtypes_and_memory",
        "after_half",
        "after_bf16",
        "[(reference.to(d).double() - reference).abs().max().item()"
        " for d in (torch.float32, torch.float16, torch.bfloat16)]",
        "positions_bf16.unique().numel()",
        "fits_until",
        "torch.allclose(explicit, implicit, atol=1e-4)",
        "len(plt.get_fignums())",
        "torch.equal(mask, ~book_mask)",
        "torch.allclose(with_book_mask, implicit, rtol=1e-4, atol=1e-4)",
        "str(kept.rope.dtype)",
        "'rope' in kept.state_dict()",
        "{str(d): costs for d, costs in table_costs.items()}",
        "[str(copy.deepcopy(rotary).half().freqs_cis.dtype),"
        " str(to_bf16.freqs_cis.dtype), kept_real]",
        "[str(w.message) for w in caught]",
        "[short_gap > 0.1, torch.allclose(lower_right, right, rtol=1e-4, atol=1e-4)]",
    )
    (half, bf16, errors, distinct, fits_until, same, figures, negated,
     book_mask_works, kept_dtype, kept_saved, table_costs, complex_casts,
     complex_warnings, unequal_lengths) = run.facts  # fmt: skip
    # A complex freqs_cis: .half() skips it, .to(bf16) keeps the real part, warning
    # once (this run is a fresh process, so the warning is caught and printed).
    assert complex_casts == ["torch.complex64", "torch.bfloat16", True]
    assert len(complex_warnings) == 1
    assert "discards the imaginary part" in complex_warnings[0]
    assert "UserWarning: Casting complex values to real discards" in run.stdout
    # is_causal=True is top-left: wrong for 16 queries over 64 keys; lower-right is.
    assert unequal_lengths == [True, True]
    # On CUDA an explicit mask rules out FlashAttention: stated with torch's docs.
    source = (EXAMPLES / "06_dtypes_and_memory.py").read_text()
    assert "SDPBackend.FLASH_ATTENTION" in source
    assert "not measured" in source
    # SDPA's boolean mask is True = attend: the book's True = hide, negated.
    assert negated
    assert not book_mask_works
    # A table rebuilt after the cast stays float32, registered, non-persistent.
    assert kept_dtype == "torch.float32"
    assert not kept_saved
    # Casting a finished table costs about what the dtype costs the result anyway.
    for dtype in ("torch.float16", "torch.bfloat16"):
        cast_table, rounded_result = table_costs[dtype]
        assert cast_table <= 2 * rounded_result
    assert half["bool_mask"] == "bool"
    assert half["position_ids"] == "int64"
    assert half["rope"] == half["float_mask"] == half["proj.weight"] == "float16"
    assert bf16["rope"] == "bfloat16"
    assert bf16["bool_mask"] == "bool"
    assert errors[0] < errors[1] < errors[2]  # float32 < float16 < bfloat16
    assert distinct < 4096
    assert 4 * fits_until**2 <= 24 * 2**30 < 4 * (fits_until + 1) ** 2
    assert same
    assert figures == 1


def test_batchnorm_and_optimizer(run_chapter):
    run = run_chapter(
        "07_batchnorm_and_optimizer",
        "in_optimizer",
        "[n for n, _ in model.named_buffers()]",
        "[b.grad for b in model.buffers()]",
        "cumulative.running_mean.item()",
        "by_forward",
        "by_step",
        "with_grad.scale.grad is not None",
        "[moved_after_requires_grad, moved_in_eval, moved_after_train]",
        "follows_unbiased",
        "converted.scale.is_leaf",
    )
    (in_optimizer, buffers, buffer_grads, cumulative_mean, by_forward, by_step,
     grad_when_asked, freezes, unbiased_var, converted_leaf) = run.facts  # fmt: skip
    # requires_grad_(False) freezes no statistic; eval() does; train() undoes it.
    assert freezes == [True, False, True]
    assert unbiased_var  # running_var follows the unbiased batch variance
    assert converted_leaf is False  # .double() turns a grad buffer into a non-leaf
    assert in_optimizer == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert not set(buffers) & set(in_optimizer)
    assert "running_mean unchanged in eval(): True" in run.stdout
    assert buffer_grads == [None, None, None]
    assert cumulative_mean == pytest.approx(3.0)  # (1 + 2 + 6) / 3 with momentum=None
    assert by_forward == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    assert set(by_step) <= set(in_optimizer)
    assert "0.bias moved by the step:" in run.stdout
    assert grad_when_asked  # "no gradient" is the default, not a rule
    assert max(len(line) for line in run.stdout.splitlines()) <= 100


def test_llm_caches(run_chapter):
    run = run_chapter(
        "08_llm_caches",
        "torch.equal(cached_tokens, plain_tokens)",
        "(cached_logits - plain_logits).abs().max().item()",
        "[n for n, _ in model.named_buffers() if n in model.state_dict()]",
        "int(filled.sum())",
        "cached_tokens.shape[1]",
        "[list(sizes) for sizes in chunk_differences]",
        "max(chunk_differences.values())",
        "[is_top_left, is_bottom_right]",
        "half_dtypes",
        "str(rotary.cos.dtype)",
        "refusals",
        "[moved, agrees, pair_gap]",
        "[__import__('test_chapters').error_of(lambda: torch.no_grad()(model)"
        "(tokens.new_zeros(1, n), start, cached))"
        " for start, n, cached in ((0, 65, False), (60, 5, True))]",
    )
    (same_tokens, logit_gap, saved_buffers, filled, length, patterns, chunk_gap,
     alignment, half_dtypes, rebuilt_dtype, refusals, checks,
     too_long) = run.facts  # fmt: skip
    # Past context_length both paths refuse in words, not with a shape error.
    assert too_long[0].startswith("ValueError: positions 0..64 do not fit")
    assert too_long[1].startswith("ValueError: positions 60..64 do not fit")
    # The cache is inference-only and sized: both refusals say what to do.
    grad_refusal = refusals["use_cache=True with gradients on"]
    assert grad_refusal.startswith("RuntimeError: the key/value cache is for inference")
    assert "torch.no_grad()" in grad_refusal
    batch_refusal = refusals["a batch of 2, cache for 1"]
    assert batch_refusal.startswith("ValueError: a batch of 2 does not fit")
    assert "max_batch_size=1" in batch_refusal
    assert batch_refusal.endswith("feed batches of at most 1")
    moved, lower_right_agrees, pair_gap = checks
    assert moved  # the uncached path trains
    assert lower_right_agrees  # causal_lower_right is the cache's mask slice
    assert pair_gap < 1e-4  # max_batch_size=2 caches two sequences correctly
    assert same_tokens
    assert logit_gap < 1e-4
    assert saved_buffers == []
    assert filled == length  # every position generated or prompted is cached
    # The cached path is right for any chunking, prefill-then-chunk included.
    assert [3, 2, 5] in patterns
    assert [1] * 10 in patterns
    assert chunk_gap < 1e-4
    assert alignment == [True, False]  # is_causal=True is top-left: wrong with a cache
    assert half_dtypes["rotary.cos"] == half_dtypes["k_cache"] == "float16"
    assert half_dtypes["causal"] == "bool"
    assert rebuilt_dtype == "torch.float32"
    assert max(len(line) for line in run.stdout.splitlines()) <= 100


def error_of(call):
    """``"Type: message"`` of what ``call()`` raises, or None if it returns.

    Evaluated inside a chapter's process, like ``ddp_failure_messages``.
    """
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test compares type and message
        return f"{type(error).__name__}: {error}"
    return None


def ddp_failure_messages(run_on_ranks):
    """What chapter 9's ``run_on_ranks`` says when rank 1 fails, dies or hangs.

    Evaluated inside the chapter's process (``run_chapter`` puts tests/ on the
    path), so the workers are forked from it, as in the chapter.
    """

    def raises(rank):
        if rank == 1:
            message = "rank 1's own error"
            raise ValueError(message)
        return rank

    def dies(rank):
        if rank == 1:
            os._exit(3)
        return rank

    def hangs(rank):
        if rank == 1:
            time.sleep(60)
        return rank

    messages = []
    for job, timeout in ((raises, 60), (dies, 60), (hangs, 3)):
        try:
            run_on_ranks(job, timeout=timeout)
        except RuntimeError as error:
            messages.append(str(error))
        else:
            messages.append(None)
    return messages


def test_ddp_buffers(run_chapter):
    run = run_chapter(
        "09_ddp_buffers",
        "[r['after last step'] for r in with_broadcast]",
        "[r['after next forward'] for r in with_broadcast]",
        "[r['after next forward'] for r in without_broadcast]",
        "[r['sum(weight)'] for r in with_broadcast + without_broadcast]",
        "refusals",
        "__import__('test_chapters').ddp_failure_messages(run_on_ranks)",
        "copied",
        "[r['rank'] for r in run_on_ranks(train, {SYNC: True}, world_size=3)]",
        "identical(run_on_ranks(train, {SYNC: True}, world_size=3),"
        " 'after next forward')",
        "identical([{'m': 1}, {'m': 1}, {'m': 2}], 'm')",
        "[SYNC, old_name[0]['warnings'], with_broadcast[0]['warnings']]",
    )
    (after_step, with_means, without_means, weight_sums, refusals, failures, copied,
     ranks_of_three, three_agree, third_differs, names) = run.facts  # fmt: skip
    # DDP copies buffers only after a forward with grad on and outside no_sync().
    assert copied == {
        "with gradients": True,
        "under no_grad()": False,
        "inside no_sync()": False,
    }
    # The helpers work for three ranks, and identical() looks at every rank.
    assert ranks_of_three == [0, 1, 2]
    assert three_agree
    assert third_differs is False
    # The page leads with the current argument; the old one warns on this torch.
    sync, old_warnings, new_warnings = names
    assert sync == "forward_sync_buffers"
    assert any("FutureWarning" in w and "deprecated" in w for w in old_warnings)
    assert new_warnings == []
    assert after_step[0] != after_step[1]  # consistent only from the next forward
    assert with_means[0] == with_means[1] == after_step[0]
    assert without_means[0] != without_means[1]
    assert with_means[0] == without_means[0]  # rank 0 computes the same either way
    assert len(set(weight_sums)) == 1  # gradients are averaged in both runs
    assert (
        refusals == ["ValueError: SyncBatchNorm layers only work with GPU modules"] * 2
    )
    raised, died, hung = failures
    assert raised == "rank 1 failed: ValueError: rank 1's own error"
    assert died == "rank 1 exited (code 3) without sending a report"
    assert hung.startswith("rank 1 sent nothing within 3 s and is still running")
    assert max(len(line) for line in run.stdout.splitlines()) <= 100


def test_mask_cost_says_in_one_line_that_it_needs_matplotlib(tmp_path):
    # A reader without matplotlib gets one line saying so, not a traceback.
    blocker = tmp_path / "matplotlib.py"
    blocker.write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\")\n")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "10_mask_cost.py")],
        cwd=tmp_path,
        env={**os.environ, "GUIDE_DEVICE": "cpu", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    # One line from the chapter, no traceback. (A CUDA build of torch without a
    # CUDA runtime logs a warning of its own on import, before it.)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "This chapter needs matplotlib for its plot: pip install matplotlib"
    )


def test_mask_cost(run_chapter):
    run = run_chapter(
        "10_mask_cost",
        "{label: len(values) for label, values in medians.items()}",
        "{label: [len(r) for r in values] for label, values in runs.items()}",
        "all(min(r) <= statistics.median(r) <= max(r)"
        " for values in runs.values() for r in values)",
        "all(v > 0 for values in medians.values() for v in values)",
        "agree",
        "timer_threads",
        "verdicts",
        "[slice_right, is_causal_right]",
        "[__import__('test_chapters').error_of(call) for call in ("
        "lambda: Attention(mode='mask'),"
        " lambda: layers['registered mask buffer'](x.new_zeros(1, 2049, 256)))]",
    )
    (counts, repeats, ordered, positive, agree, timer_threads, verdicts,
     cache_alignment, refusals) = run.facts  # fmt: skip
    # A misspelt mode and a sequence past the mask both fail early, in words.
    assert refusals[0] == (
        "ValueError: mode must be one of 'buffer', 'rebuilt', 'sdpa', not 'mask'"
    )
    assert refusals[1].startswith("ValueError: 2049 tokens do not fit the mask")
    labels = [
        "registered mask buffer",
        "mask rebuilt each forward",
        "sdpa is_causal=True",
    ]
    assert counts == dict.fromkeys(labels, 4)
    assert repeats == dict.fromkeys(labels, [5] * 4)
    assert ordered
    assert positive
    assert agree
    assert timer_threads == 1
    assert "timer threads: 1" in run.stdout
    # The conclusion is one of the three the numbers can support, and printed.
    allowed = {"slower", "faster", "no measurable difference (ranges overlap)"}
    assert set(verdicts.values()) <= allowed
    for label, verdict in verdicts.items():
        assert f"{label}: " in run.stdout
        assert verdict in run.stdout
    assert "lowest median here:" in run.stdout
    # Every output line fits 100 columns, the timing table and verdicts included.
    assert max(len(line) for line in run.stdout.splitlines()) <= 100
    # With a cache the right mask rows are past .. past + t - 1; top-left is wrong.
    assert cache_alignment == [True, False]


# -- Chapters 1-6: the download is the page ------------------------------------
FIRST_SIX = [
    "01_mask_left_behind",
    "02_register_buffer",
    "03_state_dict",
    "04_find_the_stray",
    "05_non_persistent_buffers",
    "06_dtypes_and_memory",
]
HIDE, SHOW = "# sphinx_gallery_start_ignore", "# sphinx_gallery_end_ignore"


def watched_hidden_blocks(source: str) -> str:
    """The chapter with each hidden block asserting it drew no RNG and printed nothing."""
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip())]
        if line.strip() == HIDE:
            lines.append(
                f"{indent}_hidden = (torch.get_rng_state(), __import__('io').StringIO());"
                " _redirect = __import__('contextlib').redirect_stdout(_hidden[1]);"
                " _redirect.__enter__()"
            )
        elif line.strip() == SHOW:
            lines.append(
                f"{indent}_redirect.__exit__(None, None, None);"
                " assert torch.equal(_hidden[0], torch.get_rng_state()),"
                f" 'the hidden block ending on line {number} drew from the global RNG';"
                " assert not _hidden[1].getvalue(),"
                f" 'the hidden block ending on line {number} printed '"
                " + repr(_hidden[1].getvalue())"
            )
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def without_hidden_blocks(source: str) -> str:
    """The chapter as a reader downloads it: the hidden blocks removed."""
    lines, hidden = [], False
    for line in source.splitlines():
        if line.strip() == HIDE:
            hidden = True
        elif line.strip() == SHOW:
            hidden = False
        elif not hidden:
            lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("stem", FIRST_SIX)
def test_download_prints_the_page(stem, tmp_path):
    # Hidden checks draw nothing from the global RNG and print nothing, so the
    # downloaded script (hidden blocks removed) prints what the page shows; no
    # printed line is wider than 100 columns; nothing lands on stderr.
    source = (EXAMPLES / f"{stem}.py").read_text()
    scripts, outputs = tmp_path / "scripts", []
    scripts.mkdir()
    for name, text in (
        ("watched", watched_hidden_blocks(source)),
        ("download", without_hidden_blocks(source)),
    ):
        script = scripts / f"{name}_{stem}.py"
        script.write_text(text)
        run_in = tmp_path / name
        run_in.mkdir()
        env = {
            **os.environ,
            "GUIDE_DEVICE": "cpu",
            "PYTHONHASHSEED": "0",
            "MPLBACKEND": "Agg",
        }
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=run_in,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
        outputs.append(result.stdout)
    watched, download = outputs
    assert download == watched
    wide = [line for line in watched.splitlines() if len(line) > 100]
    assert not wide, f"lines wider than 100 columns: {wide}"


def test_dtypes_and_memory_says_when_matplotlib_is_missing(tmp_path):
    # Like chapter 4's guard for the library: one line naming what to install.
    chapter = EXAMPLES / "06_dtypes_and_memory.py"
    hide_matplotlib = (
        "import runpy, sys; sys.modules['matplotlib'] = None;"
        f" runpy.run_path({str(chapter)!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_matplotlib],
        cwd=tmp_path,
        env={**os.environ, "GUIDE_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "This chapter needs matplotlib for its plot: pip install matplotlib\n"
    )


CHEAT_SHEET_RUNNER = """
import re, sys, types
display = types.ModuleType("IPython.display")
display.Markdown = str  # the table's text is enough here
sys.modules["IPython"] = types.ModuleType("IPython")
sys.modules["IPython.display"] = display
text = open(sys.argv[1]).read()
namespace = {"__name__": "__main__"}
for cell in re.findall(r"```\\{code-cell\\} ipython3\\n(.*?)```", text, re.S):
    exec("\\n".join(l for l in cell.splitlines() if not l.startswith(":tags:")), namespace)
"""


def test_cheat_sheet_claims(tmp_path):
    # The cheat sheet's hidden cell asserts its claims; run its cells as myst-nb
    # does (in order, one namespace), with IPython's Markdown stubbed.
    page = ROOT / "docs" / "cheatsheet.md"
    result = subprocess.run(
        [sys.executable, "-c", CHEAT_SHEET_RUNNER, str(page)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "forward_sync_buffers=True" in result.stdout
    assert "num_batches_tracked is 3 live, 1 averaged." in result.stdout
    assert "broadcast_buffers=True)" not in page.read_text().replace(
        "DistributedDataParallel(Probe(), broadcast_buffers=True)", ""
    )
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
