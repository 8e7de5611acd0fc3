import torch

from utils.lars import LARS


def _loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (w.sum(0) * b).sum() + (w**2).sum()


def test_lars_steps_match_the_formula():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    lr, wd, mom, eta = 0.5, 0.01, 0.9, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    w_ref, b_ref = w.detach().clone(), b.detach().clone()
    mu_w, mu_b = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for _ in range(3):
        opt.zero_grad()
        _loss(w, b).backward()
        gw, gb = torch.autograd.grad(_loss(w_ref.requires_grad_(), b_ref.requires_grad_()), (w_ref, b_ref))
        w_ref, b_ref = w_ref.detach(), b_ref.detach()
        d = gw + wd * w_ref
        mu_w = mom * mu_w + eta * w_ref.norm() / d.norm() * d
        mu_b = mom * mu_b + gb  # 1-D: no weight decay, no trust ratio
        w_ref, b_ref = w_ref - lr * mu_w, b_ref - lr * mu_b
        opt.step()
        torch.testing.assert_close(w.detach(), w_ref)
        torch.testing.assert_close(b.detach(), b_ref)


def test_zero_weight_uses_a_trust_ratio_of_one():
    p = torch.zeros(2, 2, requires_grad=True)
    opt = LARS([p], lr=0.1, weight_decay=0.5, eta=0.001)
    (p * torch.tensor([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_parameters_without_gradient_are_left_alone():
    a, b = torch.ones(2, 2, requires_grad=True), torch.ones(2, 2, requires_grad=True)
    opt = LARS([a, b], lr=1.0, weight_decay=0.1)
    a.sum().backward()
    opt.step()
    assert torch.equal(b, torch.ones(2, 2)) and not torch.equal(a, torch.ones(2, 2))
