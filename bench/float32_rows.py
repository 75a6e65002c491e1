"""Could float32 rows be computed in float32? The accuracy half of issue 16's question.

dpo_fast computes every float32 row in double and rounds once (within 2 float32 ulps of the
float64 result is the contract). Float-precision arithmetic would double the SIMD width, so
this script measures what it would cost in accuracy, with NumPy's own float32 ``logaddexp``
and ``exp`` (about an ulp each) standing in for float polynomials, on two data sets: the
benchmark's (``standard_normal * 5 - 50``) and the tests' spread-out log-probs
(``tests/helpers.random_logps``'s, scale 30). Prints, for the sigmoid loss and its gradient,
the largest distance in float32 ulps from the float64 result rounded once, and the share of
rows beyond 2 ulps:

* every row operation in float32 (c = pc - rc, r = pr - rr, z = beta (c - r), loss, grad);
* z in double, rounded to float32, the transcendentals in float32.

The loss softplus(-z) has condition number about z for z > 0, so the rounding of z alone is
amplified z-fold: only the exponential's argument reduction in double keeps the bound.

    python bench/float32_rows.py [--n N] [--seed S]
"""

from __future__ import annotations

import argparse

import numpy as np

BETA = 0.1


def ulps(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance in float32 ulps (both float32, finite, one sign per pair here)."""
    a = actual.view(np.int32).astype(np.int64)
    e = expected.view(np.int32).astype(np.int64)
    return np.abs(a - e)


def measure(name: str, arrays: list[np.ndarray]) -> None:
    pc, pr, rc, rr = (a.astype(np.float32) for a in arrays)
    # the contract: the float64 computation on the same float32 values, rounded once
    z64 = BETA * ((pc.astype(np.float64) - rc) - (pr.astype(np.float64) - rr))
    loss_ref = np.logaddexp(0.0, -z64).astype(np.float32)
    grad_ref = (-BETA / (1.0 + np.exp(z64))).astype(np.float32)

    z32 = np.float32(BETA) * ((pc - rc) - (pr - rr))
    one, zero = np.float32(1.0), np.float32(0.0)
    all_float = (np.logaddexp(zero, -z32), np.float32(-BETA) / (one + np.exp(z32)))
    z_rounded = z64.astype(np.float32)
    z_double = (np.logaddexp(zero, -z_rounded), np.float32(-BETA) / (one + np.exp(z_rounded)))

    quantiles = np.quantile(np.abs(z64), [0.5, 0.99])
    print(f"{name}: {pc.size:,} rows, |z| median {quantiles[0]:.2f}, 99th percentile "
          f"{quantiles[1]:.2f}")
    for label, (loss, grad) in (("all float32", all_float),
                                ("z in double, rest float32", z_double)):
        loss_ulps, grad_ulps = ulps(loss, loss_ref), ulps(grad, grad_ref)
        print(f"  {label:27s} loss: max {loss_ulps.max():3d} ulp, "
              f"{100 * np.mean(loss_ulps > 2):6.2f}% > 2 ulp; grad: max {grad_ulps.max():3d} "
              f"ulp, {100 * np.mean(grad_ulps > 2):6.2f}% > 2 ulp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    rng = np.random.default_rng(options.seed)
    measure("benchmark data", [rng.standard_normal(options.n) * 5 - 50 for _ in range(4)])
    measure("test data", [-np.abs(rng.normal(60.0, 30.0, options.n)) for _ in range(4)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
