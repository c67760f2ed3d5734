"""Hadamard matrices of the orders transformer widths take, and random orthogonal rotations
built from them (QuaRot / QuIP#: H diag(random signs) / sqrt(n)).

A Hadamard matrix H (n x n, entries +-1, H H^T = n I) spreads every input over all outputs
with equal weight, which is what makes rotated weights incoherent (no channel much larger
than the rest). Orders 2^k come from Sylvester's doubling; other orders as the Kronecker
product of 2^k with a Paley matrix: Paley I gives order q + 1 for a prime q = 3 (mod 4),
Paley II order 2(q + 1) for a prime q = 1 (mod 4) (576 = 16 x 36, 36 = 2 x (17 + 1);
1536 = 512 x 3 has none, 1536 = 128 x 12 with 12 = 11 + 1). Widths with no such factoring get a
seeded random orthogonal matrix instead (it is as exact, only less fast to apply online).
"""
from __future__ import annotations

import functools

import torch


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = legendre(j - i mod q): the quadratic-residue matrix of GF(q), q prime."""
    residues = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in residues else -1 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m from Paley's constructions, or None."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if m == 2:
        return torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I: [[1, 1^T], [-1, Q + I]] up to sign conventions
        Q = _jacobsthal(q)
        H = torch.ones(m, m, dtype=torch.float64)
        H[1:, 0] = -1
        H[1:, 1:] = Q + torch.eye(q, dtype=torch.float64)
        return H
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II: the conference matrix C, then a 2 x 2 block per entry
            C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            C[0, 1:] = 1
            C[1:, 0] = 1
            C[1:, 1:] = _jacobsthal(q)
            one = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            zero = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            H = torch.empty(m, m, dtype=torch.float64)
            for i in range(q + 1):
                for j in range(q + 1):
                    c = C[i, j]
                    H[2 * i:2 * i + 2, 2 * j:2 * j + 2] = zero if c == 0 else c * one
            return H
    return None


@functools.lru_cache(maxsize=16)
def hadamard(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order n (float64, entries +-1), or None when no construction here
    reaches n."""
    k = 0
    while n % (2 ** k) == 0:
        m = n // 2**k
        base = _paley(m)
        if base is not None:
            H = base
            for _ in range(k):
                H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
            return H
        k += 1
    return None


def random_rotation(n: int, generator: torch.Generator) -> torch.Tensor:
    """An orthogonal n x n matrix (float64): a Hadamard matrix with random column signs, scaled
    by 1/sqrt(n); a Haar-random orthogonal matrix where no Hadamard order fits."""
    H = hadamard(n)
    if H is None:
        q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))
        return q * torch.sign(torch.diagonal(r))[None, :]
    signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    return H * signs[None, :] / n**0.5
