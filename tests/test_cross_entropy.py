"""token_cross_entropy reads the logits as rows: the same losses and gradients as the transposed spelling."""

import torch
import torch.nn.functional as F

from dlm.objectives.cross_entropy import token_cross_entropy


def test_rows_match_the_transposed_spelling_in_value_and_gradient():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 50, generator=generator)
    target = torch.randint(0, 50, (3, 9), generator=generator)
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    a = token_cross_entropy(mine, target)
    b = F.cross_entropy(theirs.transpose(1, 2), target, reduction="none")
    assert a.shape == (3, 9)
    torch.testing.assert_close(a, b)
    weights = torch.rand(3, 9, generator=generator)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    torch.testing.assert_close(mine.grad, theirs.grad)


def test_a_sliced_view_and_a_masked_logit():
    """The objectives pass slices (the clean rows of a bd3 pass) and −inf logits (SUBS's [MASK])."""
    logits = torch.randn(2, 12, 7)
    logits[..., 6] = float("-inf")
    view = logits[:, 4:-1]
    target = torch.randint(0, 6, (2, 7))
    expected = -torch.log_softmax(view, -1).gather(-1, target[..., None])[..., 0]
    torch.testing.assert_close(token_cross_entropy(view, target), expected)
