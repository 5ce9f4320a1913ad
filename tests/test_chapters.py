"""Each chapter runs as a script on the CPU and teaches what its prose says."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES

BOOK_FIRST_ROW = [-0.4519, 0.2216]  # the book's first context vector, seed 123


def test_every_chapter_is_tested():
    chapters = {path.stem for path in EXAMPLES.glob("[0-9][0-9]_*.py")}
    assert chapters <= set(CHAPTER_TESTS), (
        f"untested chapters: {chapters - set(CHAPTER_TESTS)}"
    )


def test_mask_left_behind(run_chapter):
    run = run_chapter(
        "01_mask_left_behind",
        "cpu_context_vecs[0, 0].tolist()",
        "torch.equal(cpu_context_vecs[0], cpu_context_vecs[1])",
        "forward_failed",
        "sorted({p.device.type for p in meta_copy.parameters()})",
        "meta_copy.mask.device.type",
        "torch.allclose(context_vecs.cpu(), cpu_context_vecs)",
    )
    first_row, halves_equal, failed, meta_param_devices, meta_mask, fixed = run.facts
    assert first_row == pytest.approx(BOOK_FIRST_ROW, abs=5e-5)
    assert halves_equal
    # On the CPU nothing fails, and the page says so instead of faking an error.
    assert failed is False
    assert "nothing failed here" in run.stdout
    # The cause is still shown: .to("meta") moves the weights but not the mask.
    assert meta_param_devices == ["meta"]
    assert meta_mask == "cpu"
    assert "masked_fill_(mask, value)" in run.stdout
    assert fixed
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
    )
    (buffers, parameters, unbuffered_buffers, same_weights, equal, first_row,
     mask_follows, mask_grad) = run.facts  # fmt: skip
    assert buffers == ["mask"]
    assert parameters == ["W_query.weight", "W_key.weight", "W_value.weight"]
    assert unbuffered_buffers == []
    assert same_weights
    assert equal
    assert first_row == pytest.approx(BOOK_FIRST_ROW, abs=5e-5)
    assert mask_follows
    assert mask_grad is False


def test_state_dict(run_chapter):
    run = run_chapter(
        "03_state_dict",
        "sorted(set(with_keys) - set(without_keys))",
        "(loaded_with.mask == 2.0).sum().item()",
        "(loaded_without.mask == 2.0).sum().item()",
        "(loaded_without.mask == 1.0).sum().item()",
        "checkpoint_dir.exists()",
    )
    only_buffered, twos_with, twos_without, ones_without, checkpoints_left = run.facts
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
    )
    attention_strays, model_strays, fixed_strays, fixed_device, report, target = (
        run.facts
    )
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
    assert report == [["mask", "unexpected", "non-persistent buffer", True]]
    assert 'Unexpected key(s) in state_dict: "mask"' in run.stdout
    assert "<All keys matched successfully>" in run.stdout


CHAPTER_TESTS = {
    "01_mask_left_behind": test_mask_left_behind,
    "02_register_buffer": test_register_buffer,
    "03_state_dict": test_state_dict,
    "04_find_the_stray": test_find_the_stray,
}


@pytest.mark.parametrize("stem", sorted(CHAPTER_TESTS))
def test_chapter_writes_nothing_to_the_working_directory(run_chapter, stem):
    run = run_chapter(stem)
    assert list(run.cwd.iterdir()) == []
