r"""Number formatting and the table renderers shared by every output: ``mean(err)`` in the last
digits (``0.951(3)`` is 0.951 +- 0.003) and its inverse, and one table in the terminal (rich),
markdown, latex or plain formats."""

from __future__ import annotations

import io
import math
from typing import Any

from tabulate import tabulate

#: the output formats of every table
FORMATS = ("terminal", "markdown", "csv", "json", "latex")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

def _plain(mean: float, sig: int = 4) -> str:
    """``mean`` with ``sig`` significant digits in fixed-point notation (``0.9512``, ``-150.3``)."""
    if mean == 0:
        return "0"
    decimals = sig - 1 - math.floor(math.log10(abs(mean)))
    if decimals > 8:  # tiny numbers: fixed point would be all zeros
        return f"{mean:.{sig}g}"
    return f"{mean:.{max(decimals, 0)}f}"

def format_err(mean: float | None, err: float | None) -> str:
    r"""A value with its uncertainty in the last digits, physicists' notation.

    The error keeps two significant digits when its leading digit is 1 or 2 (PDG-like; the paper's
    ``0.75(26)``, ``0.88(15)``) and one otherwise (``0.951(3)``); an error that rounds up to the
    next decade (0.0096) becomes two digits (``(10)``). The value is rounded to the same decimal
    place. Errors >= 1 that reach across the decimal point are written in full (``12.3(1.2)``);
    without decimals both are integers (``-150(25)``).

    Arguments:
        mean: the value; ``None`` or NaN gives ``"-"``.
        err: its uncertainty; ``None``, NaN, infinite or 0 (e.g. a single seed) give the value
            alone with 4 significant digits.

    Returns:
        The formatted string.

    Example:
        >>> format_err(0.7512, 0.262), format_err(0.9512, 0.0031), format_err(12.34, 1.23)
        ('0.75(26)', '0.951(3)', '12.3(1.2)')
        >>> format_err(0.99912, 0.0), format_err(float("nan"), 0.1)
        ('0.9991', '-')
    """
    if not _finite(mean):
        return "-"
    if not _finite(err) or err == 0:
        return _plain(mean)
    err = abs(err)
    exp = math.floor(math.log10(err))
    lead = round(err / 10 ** (exp - 2))  # three leading digits, 100..1000
    if lead >= 1000:  # log10 rounding or 999.5+
        exp, lead = exp + 1, round(lead / 10)
    if lead >= 950:  # 0.0096 -> 0.010: two digits of the next decade
        exp, sig = exp + 1, 2
    else:
        sig = 2 if lead < 300 else 1
    decimals = sig - 1 - exp
    if decimals <= 0:
        return f"{round(mean, decimals):.0f}({round(err, decimals):.0f})"
    digits = round(err * 10**decimals)
    inner = f"{err:.{decimals}f}" if digits >= 10**decimals else str(digits)
    return f"{mean:.{decimals}f}({inner})"


def parse_err(text: str) -> tuple[float, float]:
    r"""Inverse of :func:`format_err`: ``"0.75(26)" -> (0.75, 0.26)``, ``"12.3(1.2)" -> (12.3, 1.2)``."""
    mean_s, _, rest = text.partition("(")
    err_s = rest.rstrip(")")
    mean = float(mean_s)
    if not err_s:
        return mean, 0.0
    if "." in err_s:
        return mean, float(err_s)
    decimals = len(mean_s.partition(".")[2])
    return mean, int(err_s) / 10**decimals


def _table(headers: list[str], rows: list[list[str]], fmt: str, *, title: str | None, width: int) -> str:
    if fmt == "terminal":
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        t = Table(*headers, title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for i, h in enumerate(headers):
            if h in ("seeds", "ESS", "ln Z", "ln Z exact", "R", "R IS", "R exact", "no support", "energy W2", "dist W2",
                     "energy W2 (HMC)", "dist W2 (HMC)", "no support (HMC)", "wall s"):
                t.columns[i].justify = "right"
        for row in rows:  # cells are text, not rich markup ("[quick]", "[u1-fourier]" must print)
            t.add_row(*(Text(str(c)) for c in row))
        # the table takes the width it needs (never squeezed or truncated); only the caption wraps at width
        console = Console(file=io.StringIO(), width=max(width, 400), color_system=None, force_terminal=False)
        console.print(t)
        lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
        return "\n".join(lines).strip("\n")
    if fmt == "markdown":
        text = tabulate(rows, headers, tablefmt="github", disable_numparse=True)
        return f"**{title}**\n\n{text}" if title else text
    # latex
    text = tabulate(rows, headers, tablefmt="latex_booktabs", disable_numparse=True)
    return f"% {title}\n{text}" if title else text

def _latex_escape(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
