"""Command-line options shared by selora-convert and selora-train (same names, same help)."""

from __future__ import annotations

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_basis_options(parser) -> None:
    """--basis and --wavelet, on a parser or an argument group."""
    parser.add_argument("--basis", choices=("wavelet", "fourier"), default="wavelet",
                        help="spectral basis: wavelet (SeLoRA-W, the paper's better variant) or fourier "
                        "(SeLoRA-F, the orthonormal Hartley basis of docs/FORMAT.md); default %(default)s")
    parser.add_argument("--wavelet", default="haar",
                        help="wavelet for --basis wavelet: haar (default, fastest), db4, bior2.2, coif1, or any "
                        "pywt discrete wavelet")


def add_coef_dtype_option(parser) -> None:
    parser.add_argument("--coef-dtype", choices=DTYPE_CHOICES, default="float32",
                        help="dtype the coefficients are stored in; default %(default)s")
