"""Unit (ID) vocabulary embedding: resizing keeps learned rows, and the optimizer trap."""

import pytest
import torch

from neurofm.nn.embedding import UnitEmbedding


def test_forward_is_row_lookup_and_in_state_dict():
    emb = UnitEmbedding(10, 4)
    tok = torch.tensor([[0, 3, 9]])
    torch.testing.assert_close(emb(tok), emb.weight[tok])
    assert "weight" in emb.state_dict() and emb.state_dict()["weight"].shape == (10, 4)


def test_extend_vocab_keeps_rows_bit_for_bit_and_inits_new_like_the_rest():
    torch.manual_seed(0)
    emb = UnitEmbedding(500, 64, init_std=0.02)
    before = emb.weight.detach().clone()
    emb.extend_vocab(2000)
    assert emb.num_embeddings == 2500
    assert torch.equal(emb.weight[:500], before)  # bit for bit
    new = emb.weight[500:]
    assert abs(new.std().item() - 0.02) < 0.001 and abs(new.mean().item()) < 0.001
    # reloads into a model built with the larger vocabulary
    other = UnitEmbedding(2500, 64)
    other.load_state_dict(emb.state_dict())
    assert torch.equal(other.weight, emb.weight)


def test_extend_keeps_requires_grad_and_rejects_negative():
    emb = UnitEmbedding(5, 3)
    emb.weight.requires_grad_(False)
    emb.extend_vocab(2)
    assert not emb.weight.requires_grad
    with pytest.raises(ValueError):
        emb.extend_vocab(-1)


def test_subset_vocab_keeps_given_rows_in_order():
    emb = UnitEmbedding(8, 3)
    w = emb.weight.detach().clone()
    emb.subset_vocab([0, 1, 2, 7, 4])
    assert torch.equal(emb.weight, w[[0, 1, 2, 7, 4]])
    with pytest.raises(IndexError):
        emb.subset_vocab([0, 9])
    with pytest.raises(ValueError, match="duplicates"):
        emb.subset_vocab([0, 0])


def test_the_trap_optimizer_built_before_extension_does_not_train_the_table():
    """The docstring's warning, demonstrated: an old optimizer keeps the old tensor."""
    torch.manual_seed(0)
    emb = UnitEmbedding(4, 2)
    stale = torch.optim.SGD(emb.parameters(), lr=1.0)
    emb.extend_vocab(2)
    emb(torch.tensor([5])).sum().backward()
    w = emb.weight.detach().clone()
    stale.step()
    assert torch.equal(emb.weight, w)  # nothing trained: the optimizer holds the replaced tensor
    fresh = torch.optim.SGD(emb.parameters(), lr=1.0)
    fresh.step()
    assert not torch.equal(emb.weight[5], w[5])  # the new row trains once the optimizer is rebuilt
    assert torch.equal(emb.weight[:5], w[:5])
