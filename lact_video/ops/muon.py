"""Newton-Schulz orthogonalisation used by the Muon fast-weight update (LaCT paper, Sec. 3.3).

The quintic iteration pushes every singular value of a matrix towards 1 without an SVD, so an
update keeps its directions but loses its scale. Only batched matmuls: it runs on GPU tensor
cores and on the CPU alike.
"""

import torch

# Coefficients of the quintic X <- aX + (bA + cA^2)X, tuned (Keller Jordan's Muon) so that five
# steps bring singular values from (0, 1] into roughly [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def zeropower_via_newtonschulz5(update: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Orthogonalise a batch of matrices.

    Args:
        update: `(B, M, K)` matrices.
        dtype: precision of the iteration. The LaCT authors use bf16 on GPUs; fp32 keeps CPU parity
            tests exact.

    Returns:
        `(B, M, K)` in the input's dtype, with singular values close to 1.
    """
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    # Iterate on the wide orientation (rows <= columns): A = X X^T is then the smaller Gram matrix.
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-2, -1)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(NS_STEPS):
        gram = x @ x.transpose(-2, -1)  # (B, M, M)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.transpose(-2, -1)
    return x.to(update.dtype)
