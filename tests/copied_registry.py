"""The classes chapters offer for reuse, registered with the copied-code harness.

One :class:`~copied_code.Copied` entry per class: how to build a small instance
and an input of a given batch size and length. ``tests/test_copied_code.py``
runs every check of ``copied_code.CHECKS`` on each. Classes a chapter shows only
to inventory them (no ``forward``), only as the bug it then fixes, or only to
show how torch treats them (chapter 16's ``TiedTable``: ``to_empty()`` unties its
two buffer names, as it unties weights) are not here.
"""

from __future__ import annotations

import torch
from copied_code import Copied, Ranked


def reset_buffers(module, _entry):
    """The chapters' recipe: each submodule's own ``reset_buffers()``, in place."""
    with torch.no_grad():
        for submodule in module.modules():
            if hasattr(submodule, "reset_buffers"):
                submodule.reset_buffers()


def init_buffers(module, _entry):
    """Chapter 12's recipe: each module's own ``init_buffers`` on the new device."""
    for submodule in module.modules():
        if hasattr(submodule, "init_buffers"):
            submodule.init_buffers("cpu")


def floats(*shape_after_batch: int):
    """An example builder: float inputs of shape (batch, length, *rest)."""

    def example(batch: int, length: int, generator: torch.Generator):
        return (torch.randn(batch, length, *shape_after_batch, generator=generator),)

    return example


def rows(width: int):
    """An example builder: (batch, width) floats; the length is unused."""

    def example(batch: int, _length: int, generator: torch.Generator):
        return (torch.randn(batch, width, generator=generator),)

    return example


def token_ids(vocab: int):
    def example(batch: int, length: int, generator: torch.Generator):
        return (torch.randint(0, vocab, (batch, length), generator=generator),)

    return example


REGISTRY: list[Copied] = [
    Copied(
        "02_register_buffer",
        "CausalAttentionWithBuffer",
        make=lambda ns: ns.CausalAttentionWithBuffer(3, 2, 8, 0.0),
        example=floats(3),
        inductor=True,
    ),
    Copied(
        "08_llm_caches",
        "TinyGPT",
        make=lambda ns: ns.TinyGPT(
            vocab=50, dim=16, heads=2, layers=2, context_length=16, max_batch_size=3
        ),
        example=token_ids(50),
        reinit=reset_buffers,
    ),
    Copied(
        "08_llm_caches",
        "TinyGPT(use_cache=True)",
        make=lambda ns: ns.TinyGPT(
            vocab=50, dim=16, heads=2, layers=2, context_length=16, max_batch_size=3
        ),
        example=token_ids(50),
        call=lambda module, inputs: module(*inputs, 0, use_cache=True),
        reinit=reset_buffers,
        inference_only="for inference only",
    ),
    *[
        Copied(
            "10_mask_cost",
            f"Attention(mode={mode!r})",
            make=lambda ns, mode=mode: ns.Attention(
                dim=16, heads=2, context_length=16, mode=mode
            ),
            example=floats(16),
            reinit=reset_buffers,
        )
        for mode in ("buffer", "rebuilt", "sdpa")
    ],
    Copied(
        "11_evolving_buffers",
        "Embedding",
        make=lambda ns: ns.Model(ns.Embedding()),
        example=token_ids(32),
        reinit=init_buffers,
    ),
    Copied(
        "12_meta_init",
        "Rotary",
        make=lambda ns: ns.Rotary(16),
        example=floats(16),
        long_length=1024,
        reinit=init_buffers,
        # The page: a module cast rounds inv_freq too; init_buffers restores it.
        after_cast=init_buffers,
    ),
    Copied(
        "12_meta_init",
        "Attention",
        make=lambda ns: ns.Attention(dim=16, window=8),
        example=floats(16),
        reinit=init_buffers,
    ),
    Copied(
        "12_meta_init",
        "TiedLM",
        make=lambda ns: ns.TiedLM(vocab=10, dim=4),
        example=token_ids(10),
        # to_empty() unties the weights; the class's own tie_weights() re-ties them.
        reinit=lambda module, _entry: module.tie_weights(),
    ),
    Copied(
        "13_compile_and_export",
        "RunningMean",
        make=lambda ns: ns.RunningMean(dim=4),
        example=rows(4),
        rows_independent=False,
    ),
    Copied(
        "13_compile_and_export",
        "WarmupScaleInGraph",
        make=lambda ns: ns.WarmupScaleInGraph(warmup=3),
        example=rows(4),
    ),
    Copied(
        "14_averaged_models",
        "RangeScaledFixed",
        make=lambda ns: ns.RangeScaledFixed(),
        example=rows(4),
        rows_independent=False,
    ),
    Copied(
        "16_functional_buffers",
        "FixedStepCounter",
        make=lambda ns: ns.FixedStepCounter(),
        example=rows(4),
    ),
    Copied(
        "17_checkpointing_and_batchnorm",
        "Checkpointed",
        make=lambda ns: ns.Checkpointed(ns.make_block()),
        example=rows(16),
    ),
    Copied(
        "19_buffers_with_history",
        "PeakScaledFixed",
        make=lambda ns: ns.PeakScaledFixed(dim=8),
        example=rows(8),
    ),
    Copied(
        "22_accelerate_big_models",
        "TinyLM",
        make=lambda ns: ns.TinyLM(vocab=50, dim=16, context_length=1024),
        example=token_ids(50),
        reinit=reset_buffers,
        long_length=1024,
        # The page: a cast rounds inv_freq too; reset_buffers() puts float32 back.
        after_cast=reset_buffers,
    ),
    Copied(
        "15_fsdp2_buffers",
        "Net",
        make=lambda ns: ns.Net(),
        example=rows(4),
        reinit=reset_buffers,
    ),
]

RANKED: list[Ranked] = [
    Ranked(
        "09_ddp_buffers",
        "run_on_ranks(train)",
        run=lambda ns, n: ns.run_on_ranks(ns.train, {ns.SYNC: True}, world_size=n),
        # With the per-forward buffer copy on, every rank ends with rank 0's stats.
        agrees=lambda ns, reports: ns.identical(reports, "after next forward"),
    ),
    Ranked(
        "15_fsdp2_buffers",
        "run_on_ranks(rank_report)",
        run=lambda ns, n: ns.run_on_ranks(ns.rank_report, world_size=n),
        agrees=lambda _ns, reports: (
            [r["rank"] for r in reports] == list(range(len(reports)))
        ),
    ),
]
