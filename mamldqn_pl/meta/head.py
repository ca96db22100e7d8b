"""ANIL's meta-objective with its meta-gradient written out: K TD steps of a linear head per task, forward and
backward by hand, second order included.

Why: the torch.func path (vmap of grad of grad) spends most of a small meta-step dispatching hundreds of tiny
operations. For a linear head the inner gradient of the TD loss is closed-form (Huber: clamp(error, -1, 1); MSE:
2 error) and so is its derivative, so the whole inner loop and its backward are a few batched matrix products
per step. `InnerLoop.meta_losses` uses this for head-only adaptation with fixed inner rates; the torch.func path
stays the reference it is tested against (values and meta-gradients, first and second order).

Shapes: w [A, F] and b [A] (the shared initialisation), xs [T, N, F] support features, xq [T, M, F] query features,
as/aq actions, ys/yq fixed TD targets. Output: per-task query losses [T]. Gradients flow to w, b, xs and xq (and on
through xs, xq into the body by ordinary autograd); the targets and actions get none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamldqn_pl.meta.td import pointwise_td_loss


def td_derivatives(error: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """h'(e) and h''(e) of the per-element TD loss h (smooth L1 with beta 1, or squared error)."""
    if kind == "huber":
        return error.clamp(-1.0, 1.0), (error.abs() < 1.0).to(error.dtype)
    return 2.0 * error, torch.full_like(error, 2.0)


def taken_q(x: Tensor, w: Tensor, b: Tensor, onehot: Tensor) -> Tensor:
    """Q(s, a) of the taken actions: (x W^T + b) gathered by a one-hot mask, [T, N]."""
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)).mul_(onehot).sum(-1)


def heads_query_losses(w: Tensor, b: Tensor, query: dict[str, Tensor], kind: str = "huber") -> Tensor:
    """Per-task query TD losses [T] of per-task heads w [T, A, F], b [T, A] on the query's features [T, M, F]:
    what the exact solvers (ridge, dynamics) score the heads they reach with, by ordinary autograd."""
    q = torch.baddbmm(b.unsqueeze(1), query["x"], w.transpose(1, 2))
    q_sa = q.gather(-1, query["actions"].unsqueeze(-1)).squeeze(-1)
    return pointwise_td_loss(q_sa, query["target"].detach(), kind).mean(-1)


class LinearHeadMetaLoss(torch.autograd.Function):
    """Per-task query TD losses after K inner SGD steps of a linear head (see the module docstring).

    scale_s, scale_q: per-task factors on the support and query losses ([T]; 1 unless td_normalize).
    query_weights: the weight of the query loss after each step 0..K (MAML: only step K; MAML++: 1/K each).
    """

    @staticmethod
    def forward(ctx, w: Tensor, b: Tensor, xs: Tensor, onehot_s: Tensor, ys: Tensor, xq: Tensor, onehot_q: Tensor,
                yq: Tensor, scale_s: Tensor, scale_q: Tensor, lr: float, query_weights: tuple[float, ...],
                kind: str, first_order: bool) -> Tensor:
        t = xs.shape[0]
        ws = [w.unsqueeze(0).expand(t, *w.shape)]
        bs = [b.unsqueeze(0).expand(t, *b.shape)]
        curvatures, ps = [], []
        coef_s = scale_s.unsqueeze(1) / xs.shape[1]
        for _ in range(len(query_weights) - 1):
            error = taken_q(xs, ws[-1], bs[-1], onehot_s) - ys
            slope, curvature = td_derivatives(error, kind)
            p = onehot_s * (slope * coef_s).unsqueeze(-1)  # [T, N, A]: d(support loss)/dQ
            ws.append(ws[-1] - lr * torch.bmm(p.transpose(1, 2), xs))
            bs.append(bs[-1] - lr * p.sum(1))
            curvatures.append(curvature)
            ps.append(p)
        losses = xq.new_zeros(t)
        slopes_q = {}
        for j, weight in enumerate(query_weights):
            if weight:
                q_sa = taken_q(xq, ws[j], bs[j], onehot_q)
                losses = losses + weight * pointwise_td_loss(q_sa, yq, kind).mean(1)
                slopes_q[j] = td_derivatives(q_sa - yq, kind)[0]
        ctx.save_for_backward(xs, onehot_s, xq, onehot_q, scale_s, scale_q)
        # intermediates of the K steps, kept for the backward (small: [T, A, F] and [T, N] each)
        ctx.ws, ctx.curvatures, ctx.ps, ctx.slopes_q = ws, curvatures, ps, slopes_q
        ctx.lr, ctx.query_weights, ctx.first_order = lr, query_weights, first_order
        return losses * scale_q

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        xs, onehot_s, xq, onehot_q, scale_s, scale_q = ctx.saved_tensors
        lr, weights, ws = ctx.lr, ctx.query_weights, ctx.ws
        coef_s = scale_s.unsqueeze(1) / xs.shape[1]
        coef_q = (grad_losses * scale_q).unsqueeze(1) / xq.shape[1]
        want_xs = ctx.needs_input_grad[2] and not ctx.first_order
        g_w = g_b = g_xq = g_xs = None

        def add(total: Tensor | None, term: Tensor) -> Tensor:  # in place: the sums are fresh tensors of ours
            return term if total is None else total.add_(term)

        for j in range(len(weights) - 1, -1, -1):
            if weights[j]:  # the query loss taken after step j
                r = onehot_q * (ctx.slopes_q[j] * coef_q * weights[j]).unsqueeze(-1)  # [T, M, A]
                g_w = add(g_w, torch.bmm(r.transpose(1, 2), xq))
                g_b = add(g_b, r.sum(1))
                if ctx.needs_input_grad[5]:
                    g_xq = add(g_xq, torch.bmm(r, ws[j]))
            if j == 0 or ctx.first_order or g_w is None:
                continue  # first order: W_j = W_{j-1} - lr * (constant), so the cotangent passes unchanged
            k = j - 1  # back through step k: W_j = W_k - lr * P_k^T xs, P_k = onehot * h'(e_k) * coef
            c_w, c_b = -lr * g_w, -lr * g_b
            g_p = torch.baddbmm(c_b.unsqueeze(1), xs, c_w.transpose(1, 2))  # [T, N, A]
            r = onehot_s * ((g_p * onehot_s).sum(-1) * ctx.curvatures[k] * coef_s).unsqueeze(-1)
            if want_xs:  # xs enters both as the step's input and through the errors: one product for the two
                a, b = torch.cat([ctx.ps[k], r], 2), torch.cat([c_w, ws[k]], 1)
                # accumulated inside the product (bitwise the sum of a fresh product: one pass over g_xs less)
                g_xs = torch.bmm(a, b) if g_xs is None else g_xs.baddbmm_(a, b)
            g_w = g_w + torch.bmm(r.transpose(1, 2), xs)
            g_b = g_b + r.sum(1)
        return (g_w.sum(0), g_b.sum(0), g_xs, None, None, g_xq, None, None, None, None, None, None, None, None)


def linear_head_meta_losses(w: Tensor, b: Tensor, support: dict[str, Tensor], query: dict[str, Tensor], lr: float,
                            steps: int, kind: str = "huber", first_order: bool = False, normalize: bool = False,
                            multi_step: bool = False) -> Tensor:
    """Per-task query losses after `steps` inner steps of the head (w, b) on each task's support batch; the
    batches hold x [T, N, F], actions [T, N] and target [T, N] as in `InnerLoop`."""
    n_actions = w.shape[0]
    onehot_s = torch.nn.functional.one_hot(support["actions"], n_actions).to(w.dtype)
    onehot_q = torch.nn.functional.one_hot(query["actions"], n_actions).to(w.dtype)
    ys, yq = support["target"].detach(), query["target"].detach()
    if normalize:
        scale_s, scale_q = 1.0 / (ys.abs().mean(1) + 1.0), 1.0 / (yq.abs().mean(1) + 1.0)
    else:
        scale_s = scale_q = ys.new_ones(ys.shape[0])
    if multi_step and steps > 0:
        weights = (0.0,) + (1.0 / steps,) * steps
    else:
        weights = (0.0,) * steps + (1.0,)
    return LinearHeadMetaLoss.apply(w, b, support["x"], onehot_s, ys, query["x"], onehot_q, yq, scale_s, scale_q,
                                    lr, weights, kind, first_order)
