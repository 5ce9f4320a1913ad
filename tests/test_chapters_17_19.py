"""Chapters 17 to 19 run as scripts on the CPU and teach what their prose says."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from copied_code import definitions


def test_checkpointing_and_batchnorm(run_chapter):
    run = run_chapter(
        "17_checkpointing_and_batchnorm",
        "[plain_numbers, checkpointed_numbers]",
        "max(abs(a - b) for a, b in zip(plain_losses, checkpointed_losses))",
        "[after_forward, after_backward]",
        "ratio",
        "table",
        "grad_mode_seen",
        "[outside_numbers, fixed_numbers, compiled_numbers, compiled_wrapped_numbers]",
        "refused",
        "[reassigning.body[0].calls.item(),"
        " reassigning.body[1].num_batches_tracked.item()]",
        "list(fixed_model.state_dict())[:2]",
    )
    (numbers, loss_gap, counts, ratio, table, grad_mode, fixes,
     refused, reassigned, wrapped_keys) = run.facts  # fmt: skip
    plain, checkpointed = numbers
    # Checkpointing counts every training step twice and moves the statistics ...
    assert plain["num_batches_tracked"] == 5
    assert checkpointed["num_batches_tracked"] == 10
    assert checkpointed["running_mean"] > 1e-3
    assert checkpointed["running_var"] > 1e-3
    # ... while computing the same gradients.
    assert checkpointed["weights"] < 1e-4
    assert loss_gap < 1e-4
    # The second update happens in backward, towards the same batch mean.
    assert counts == [1, 2]
    assert ratio == pytest.approx(0.19, abs=1e-3)
    # Only in train() with grad; both flavours.
    assert table == {
        "none": [1, 1, 0],
        "non-reentrant": [2, 1, 0],
        "reentrant": [2, 1, 0],
    }
    assert grad_mode == {"non-reentrant": [True, True], "reentrant": [False, True]}
    # Each fix (and torch.compile) counts once and matches the plain run.
    for fixed in fixes:
        assert fixed["num_batches_tracked"] == 5
        assert fixed["running_mean"] < 1e-5
        assert fixed["running_var"] < 1e-5
    # Checkpointed puts back buffers replaced by forward, not only updated in place.
    assert reassigned == [5, 5]
    # The wrapper prefixes its state_dict keys.
    assert wrapped_keys == ["body.0.weight", "body.0.bias"]
    assert refused.startswith("ValueError: Passing `context_fn`")
    assert "ValueError: Passing `context_fn`" in run.stdout
    assert "torch 2." in run.stdout
    assert "device: cpu" in run.stdout


def train_three_steps(module, body):
    """Three SGD steps of ``module``; returns ``body``'s BatchNorm buffers."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, 16, generator=generator)
        module(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name: b.clone() for name, b in body[1].named_buffers()}


def test_checkpointed_updates_buffers_once():
    """The chapter's ``Checkpointed`` module, beyond the page's own run."""
    chapter = definitions("17_checkpointing_and_batchnorm")
    torch.manual_seed(0)
    body = chapter.make_block()
    plain_body = copy.deepcopy(body)
    wrapped = chapter.Checkpointed(body)
    expected = train_three_steps(plain_body, plain_body)
    actual = train_three_steps(wrapped, body)
    assert actual["num_batches_tracked"].item() == 3
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, msg=name)
    # In eval() or under no_grad nothing is checkpointed and nothing recomputed.
    with torch.no_grad():
        wrapped(torch.zeros(4, 16))
    assert body[1].num_batches_tracked.item() == 4


class ReplacesBuffer(torch.nn.Module):
    """Counts training calls by replacing a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long), False)

    def forward(self, x):
        if self.training:
            self.calls = self.calls + 1
        return x.sin()  # saves x for backward, so backward recomputes


def test_checkpointed_puts_back_replaced_buffers():
    """A nested buffer that forward replaces is put back, and stays non-persistent."""
    chapter = definitions("17_checkpointing_and_batchnorm")
    body = torch.nn.Sequential(torch.nn.Sequential(ReplacesBuffer()))
    wrapped = chapter.Checkpointed(body)
    for _ in range(3):
        wrapped(torch.ones(2, 3, requires_grad=True)).sum().backward()
    assert body[0][0].calls.item() == 3
    assert "body.0.0.calls" not in wrapped.state_dict()
    assert [name for name, _ in wrapped.named_buffers()] == ["body.0.0.calls"]


def test_accumulation_and_batchnorm(run_chapter):
    run = run_chapter(
        "18_accumulation_and_batchnorm",
        "[full[1].num_batches_tracked.item(), micro[1].num_batches_tracked.item()]",
        "[outputs_gap, gradient_gap]",
        "gaps",
        "[reference.num_batches_tracked.item(), naive.num_batches_tracked.item()]",
        "mean_gaps",
        "adjusted_momentum",
        "same_gradient",
        "by_size",
        "[untracked_gap, list(dict(untracked.named_buffers()))]",
        "torch.allclose(in_batch, alone)",
        "cumulative_gaps",
        "cumulative_micro.num_batches_tracked.item()",
    )
    (counts, gaps_full, gaps, drift_counts, mean_gaps, momentum, same_gradient,
     by_size, untracked, eval_same, cumulative, cumulative_count) = run.facts  # fmt: skip
    # One count per micro-batch, and outputs and gradients that differ.
    assert counts == [1, 4]
    assert min(gaps_full) > 0.01
    # Row-wise normalisation (or none) accumulates the full gradient.
    assert gaps["BatchNorm1d"] > 0.01
    assert max(gaps["LayerNorm"], gaps["GroupNorm(4 groups)"], gaps["none"]) < 1e-5
    # The running statistics: four updates per step, fixed by the momentum ...
    assert drift_counts == [10, 40]
    assert momentum == pytest.approx(1 - 0.9**0.25)
    assert mean_gaps["adjusted"] < mean_gaps["naive"] / 5
    # ... which does not touch the gradients.
    assert same_gradient
    # Larger micro-batches shrink the gradient error; the full batch has none.
    sizes = sorted(by_size, key=int)
    assert [by_size[s] for s in sizes] == sorted(by_size.values(), reverse=True)
    assert by_size["64"] == 0.0
    # track_running_stats=False: no buffers, same gradient error, batch-dependent eval.
    assert untracked[0] > 0.01
    assert untracked[1] == []
    assert not eval_same
    assert "num_batches_tracked 4" in run.stdout
    # momentum=None: a cumulative average over micro-batches keeps the mean of
    # equal micro-batches, not their variance, and still counts micro-batches.
    assert cumulative["running_mean"] < 1e-4
    assert cumulative["running_var"] > 1e-3
    assert cumulative_count == 40


def test_buffers_with_history(run_chapter):
    run = run_chapter(
        "19_buffers_with_history",
        "growth",
        "completed",
        "str(second_backward_error)",
        "str(deepcopy_error)",
        "saved_peak.grad_fn is None",
        "[fixed.peak.grad_fn is None, graph_size(fixed.peak)]",
        "gradient_gap",
        "carrying",
    )
    (growth, completed, backward_error, deepcopy_error, state_dict_detached,
     fixed, gradient_gap, carrying) = run.facts  # fmt: skip
    # The graph and its saved tensors grow by the same amount every step.
    nodes = [n for n, _ in growth]
    saved = [b for _, b in growth]
    assert len({b - a for a, b in itertools.pairwise(nodes)}) == 1
    assert nodes[1] > nodes[0]
    assert len({b - a for a, b in itertools.pairwise(saved)}) == 1
    assert saved[1] > saved[0]
    # The second backward and deepcopy fail with torch's own messages.
    assert completed == 1
    assert backward_error.startswith("Trying to backward through the graph a second")
    assert deepcopy_error.startswith(
        "Only Tensors created explicitly by the user (graph leaves) support the "
        "deepcopy protocol"
    )
    assert "Trying to backward through the graph a second time" in run.stdout
    assert state_dict_detached
    # The fix leaves no history; the history had changed the gradient.
    assert fixed == [True, [0, 0]]
    assert gradient_gap > 1e-6
    # The three-line check names the buffer.
    assert carrying == ["peak"]
    assert "buffers with autograd history: ['peak']" in run.stdout


def test_history_check_catches_the_bug():
    """The chapter's fixed class trains cleanly; without its no_grad it does not."""
    chapter = definitions("19_buffers_with_history")
    for cls, expect_history in (
        (chapter.PeakScaledFixed, False),
        (chapter.PeakScaled, True),
    ):
        torch.manual_seed(0)
        module = cls(dim=4)
        module(torch.randn(3, 4)).square().mean().backward()
        carrying = [n for n, b in module.named_buffers() if b.grad_fn is not None]
        assert bool(carrying) is expect_history, cls.__name__
