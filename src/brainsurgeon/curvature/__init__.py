"""Curvature statistics: accumulators fed by hooks or torch.func, then pure solvers."""
