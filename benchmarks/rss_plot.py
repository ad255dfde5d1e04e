"""Plot the sustained run's memory (``build/e2e_rss.csv``) as a small SVG, no plotting library.

    .venv/bin/python -m benchmarks.rss_plot build/e2e_rss.csv docs/img/e2e_rss.svg

>>> svg = plot([(0.0, 300.0), (60.0, 320.0), (120.0, 318.0)], "RSS")
>>> svg.startswith("<svg") and "polyline" in svg and "320 MB" in svg
True
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 640, 240, 48


def plot(points: list[tuple[float, float]], title: str) -> str:
    """An SVG line of (seconds, MB) ``points``, the y axis from 0 (a flat line looks flat)."""
    t_max = max(t for t, _ in points) or 1.0
    mb_max = max(mb for _, mb in points) * 1.15 or 1.0

    def xy(t: float, mb: float) -> str:
        x = MARGIN + (WIDTH - 2 * MARGIN) * t / t_max
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * mb / mb_max
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, mb) for t, mb in points)
    peak = max(mb for _, mb in points)
    ticks = "".join(
        f'<text x="{MARGIN - 6}" y="{HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * v / mb_max + 4:.1f}" '
        f'text-anchor="end">{v:.0f}</text>'
        for v in (0, mb_max / 2, peak)
    )
    minutes = "".join(
        f'<text x="{MARGIN + (WIDTH - 2 * MARGIN) * m * 60 / t_max:.1f}" y="{HEIGHT - MARGIN + 16}" '
        f'text-anchor="middle">{m:g}</text>'
        for m in range(0, int(t_max // 60) + 1, max(1, int(t_max // 60) // 10 or 1))
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="11">'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle">{title}</text>'
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" '
        f'stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" '
        f'stroke="black"/>{ticks}{minutes}'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">minutes</text>'
        f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" '
        f'text-anchor="middle">MB</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>'
        f'<text x="{WIDTH - MARGIN}" y="{MARGIN - 6}" text-anchor="end">max {peak:.0f} MB</text>'
        f"</svg>\n"
    )


def read_rss(path: Path) -> list[tuple[float, float]]:
    """The (seconds, MB) rows of ``benchmarks.end_to_end``'s RSS CSV."""
    with path.open() as f:
        return [(float(r["seconds"]), float(r["rss_mb"])) for r in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path, help="seconds,rss_mb rows (benchmarks.end_to_end)")
    parser.add_argument("svg", type=Path)
    parser.add_argument("--title", default="observer up: resident memory under sustained load")
    args = parser.parse_args(argv)
    rows = read_rss(args.csv)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(plot(rows, args.title))
    print(f"{args.svg}: {len(rows)} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
