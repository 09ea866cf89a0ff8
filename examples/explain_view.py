"""The picture of a query: index the sample conversation, save it, and explain one question as HTML.

    python examples/explain_view.py                   # writes explain_view.html
    python examples/explain_view.py --png view.png    # and renders it (pip install weasyprint pypdfium2)

The same page comes from the command line for any saved memory:
``saememory explain <memory folder> "<question>" --out view.html``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_conversation import messages  # noqa: E402

from saememory import SAEMemory  # noqa: E402
from saememory.cli import main as saememory_command  # noqa: E402

QUESTION = "What instrument is my daughter learning, and when?"


def render_png(html_path: Path, png_path: Path, width_px: int = 1000) -> None:
    """Renders the page to a PNG (WeasyPrint lays it out, pdfium rasterises it): dev tools, not dependencies."""
    import pypdfium2
    import weasyprint

    css = weasyprint.CSS(string=f"@page {{ size: {width_px}px 1400px; margin: 0 }}")
    pdf = weasyprint.HTML(filename=str(html_path)).write_pdf(stylesheets=[css])
    page = pypdfium2.PdfDocument(pdf)[0]
    image = page.render(scale=1.5).to_pil()
    bbox = image.convert("L").point(lambda v: 255 if v < 250 else 0).getbbox()  # crop the empty bottom
    image = image.crop((0, 0, image.width, min(image.height, bbox[3] + 30))) if bbox else image
    image.convert("RGB").quantize(colors=64).save(png_path, optimize=True)  # a small file for the README


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("explain_view.html"))
    parser.add_argument("--png", type=Path, default=None, help="also render the page to this PNG")
    args = parser.parse_args(argv)
    memory = SAEMemory()
    memory.add(messages())
    with tempfile.TemporaryDirectory() as folder:
        memory.save(folder)
        saememory_command(["explain", folder, QUESTION, "--k", "3", "--out", str(args.out)])
    if args.png:
        render_png(args.out, args.png)
        print(f"rendered {args.png}")


if __name__ == "__main__":
    main()
