"""What the GPTQ-on-a-grid tests share: a Hessian of correlated inputs (where error compensation
has something to exploit) and the layer output error GPTQ minimises."""
import torch


def correlated_hessian(seed: int = 0, tokens: int = 2048, width: int = 256) -> torch.Tensor:
    """H = 2 X^T X / n of correlated inputs; seeds torch's generator first, so the weights a
    test draws next are the same on every run."""
    torch.manual_seed(seed)
    X = torch.randn(tokens, width) @ torch.randn(width, width) * 0.3
    return 2 * X.T @ X / X.shape[0]


def output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the summed squared output error over the calibration inputs."""
    D = W - Q
    return torch.trace(D @ H @ D.T).item()
