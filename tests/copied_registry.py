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
from copied_code import Copied, Ranked, Stateful


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
        "07_batchnorm_and_optimizer",
        "FrozenNormSequential",
        make=lambda ns: ns.FrozenNormSequential(
            torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)
        ),
        example=rows(4),
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

STATEFUL: list[Stateful] = [
    Stateful("04_find_the_stray", "FixedTinyGPT", make=lambda ns: ns.FixedTinyGPT()),
    Stateful(
        "04_find_the_stray", "MaskedAttentionV2", make=lambda ns: ns.MaskedAttentionV2()
    ),
    Stateful(
        "05_non_persistent_buffers",
        "Attention",
        make=lambda ns: ns.Attention(dim=8, context_length=16, persistent_mask=False),
    ),
    Stateful("06_dtypes_and_memory", "Block", make=lambda ns: ns.Block()),
    Stateful("21_distributed_checkpoints", "Scaler", make=lambda ns: ns.Scaler()),
    Stateful(
        "21_distributed_checkpoints",
        "ScalerWithCount",
        make=lambda ns: ns.ScalerWithCount(),
    ),
]

_PART = "a part of {}, which is registered and builds it"
_BUG = "the bug the page then fixes ({})"
_STRAYS = "holds strays for the library to inspect; the page says it is not to copy"
_EARLIER = "an earlier version, kept to make old checkpoints ({} replaces it)"
_INSTRUMENT = "the page's instrument: records what torch does, for the page's checks"

NOT_OFFERED: dict[tuple[str, str], str] = {
    ("01_mask_left_behind", "CausalAttentionWithoutBuffers"): _BUG.format(
        "chapter 2's CausalAttentionWithBuffer"
    ),
    ("02_register_buffer", "CausalAttentionWithoutBuffers"): _BUG.format(
        "CausalAttentionWithBuffer"
    ),
    ("03_state_dict", "CausalAttentionWithoutBuffers"): _BUG.format(
        "CausalAttentionWithBuffer"
    ),
    ("03_state_dict", "CausalAttentionWithBuffer"): (
        "chapter 2's class, the same source, registered there"
    ),
    ("03_state_dict", "Order"): "shows the order of state_dict()'s keys",
    ("03_state_dict", "Payload"): "a pickle that runs code, to show weights_only",
    ("04_find_the_stray", "CausalAttentionWithoutBuffers"): _STRAYS,
    ("04_find_the_stray", "Rotary"): _STRAYS,
    ("04_find_the_stray", "Attention"): _STRAYS,
    ("04_find_the_stray", "Block"): _STRAYS,
    ("04_find_the_stray", "TinyGPT"): _STRAYS,
    ("04_find_the_stray", "MixedParts"): _STRAYS,
    ("04_find_the_stray", "MovedTensors"): _INSTRUMENT,
    ("04_find_the_stray", "FixedRotary"): _PART.format("FixedTinyGPT"),
    ("04_find_the_stray", "FixedAttention"): _PART.format("FixedTinyGPT"),
    ("04_find_the_stray", "FixedBlock"): _PART.format("FixedTinyGPT"),
    ("04_find_the_stray", "MaskedAttentionV1"): _EARLIER.format("MaskedAttentionV2"),
    ("04_find_the_stray", "SpyLinear"): _INSTRUMENT,
    ("06_dtypes_and_memory", "ComplexRotary"): (
        "shows how torch casts a complex buffer: .to(bfloat16) keeps only its real "
        "part, the page's point"
    ),
    ("06_dtypes_and_memory", "SquareTensors"): _INSTRUMENT,
    ("08_llm_caches", "Rotary"): _PART.format("TinyGPT"),
    ("08_llm_caches", "Attention"): _PART.format("TinyGPT"),
    ("08_llm_caches", "Block"): _PART.format("TinyGPT"),
    ("11_evolving_buffers", "EmbeddingV1"): _EARLIER.format("Embedding"),
    ("11_evolving_buffers", "EmbeddingV2"): _EARLIER.format("Embedding"),
    ("11_evolving_buffers", "SpyEmbedding"): _INSTRUMENT,
    ("11_evolving_buffers", "Model"): _PART.format("Embedding (its wrapper)"),
    ("12_meta_init", "RelativePositionBias"): _PART.format("Attention"),
    ("13_compile_and_export", "RunningMeanWithGraph"): _BUG.format("RunningMean"),
    ("13_compile_and_export", "RunningMeanWithGraphFloatCounter"): _BUG.format(
        "RunningMean"
    ),
    ("13_compile_and_export", "RunningMeanReassigned"): (
        "shown to compare reassignment with RunningMean's in-place update"
    ),
    ("13_compile_and_export", "RunningMeanIntCounter"): _BUG.format("RunningMean"),
    ("13_compile_and_export", "WarmupScale"): _BUG.format("WarmupScaleInGraph"),
    ("13_compile_and_export", "KeyCache"): (
        "shows how Dynamo compiles a cache write; one sequence and inference only "
        "by design, both refusals checked on the page"
    ),
    ("13_compile_and_export", "Everything"): (
        "one tensor of each kind, a plain attribute among them, to show "
        "torch.export's signature"
    ),
    ("14_averaged_models", "RangeScaled"): _BUG.format("RangeScaledFixed"),
    ("16_functional_buffers", "StepCounter"): _BUG.format("FixedStepCounter"),
    ("16_functional_buffers", "TiedTable"): (
        "shows how torch treats it: to_empty() unties its two buffer names"
    ),
    ("17_checkpointing_and_batchnorm", "Probe"): _INSTRUMENT,
    ("17_checkpointing_and_batchnorm", "CountCalls"): _INSTRUMENT,
    ("17_checkpointing_and_batchnorm", "CopiedBack"): (
        "the alternative the page shows to miss a replaced buffer"
    ),
    ("19_buffers_with_history", "PeakScaled"): _BUG.format("PeakScaledFixed"),
    ("21_distributed_checkpoints", "ScalerV1"): _EARLIER.format("ScalerV2"),
    ("21_distributed_checkpoints", "ScalerV2"): (
        "the page's migration, instrumented: it records each call in the page's "
        "list; Scaler holds its state"
    ),
}
