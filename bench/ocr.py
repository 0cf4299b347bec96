"""OCR engines side by side on the same scanned pages: characters right, and pages/s.

Pages of a real PDF (the Debian FAQ from Debian's `debian-faq`, or --pdf) are rendered to
images with pdftoppm and wrapped into an image-only PDF with img2pdf: a clean scan whose
true text is the original's text layer. Each page of that scan is rendered as ingest
renders it (ingest/ocr.py, pypdfium2 at 300 dpi) and read by both candidates:

- tesseract: the Debian/Homebrew program, run as ingest runs it (ingest/tesseract.py);
- rapidocr: `rapidocr-onnxruntime` from PyPI (PP-OCR models inside the wheel, onnxruntime),
  pip install rapidocr-onnxruntime to include it.

Accuracy is difflib's ratio of matching characters between the OCR text and the text layer
as pdftotext reads it (both with ligatures, quotes and dashes folded, hyphenated line ends
joined and whitespace collapsed), and the same ratio over the characters other than
whitespace; speed is OCR seconds per page, rendering not counted (the same for both).
Both engines get --threads CPU threads (1: as ingest runs Tesseract, one page per core).

    python bench/ocr.py [--pdf FILE.pdf] [--pages 10,20,30,40,50] [--threads 1]
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_debian_faq_eval import DEFAULT_CACHE, FAQ_SUBDIR, fetch_package  # noqa: E402
from ingest.ocr import OCR_DPI, render_page  # noqa: E402
from ingest.tesseract import find_tesseract, read_image  # noqa: E402

DEFAULT_PAGES = (10, 20, 30, 40, 50)
_FOLD = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                       "\u2014": "-", "\u2022": "", "\u00b7": "", "\u2026": "..."})  # fmt: skip


def faq_pdf(cache: Path = DEFAULT_CACHE) -> Path:
    """The Debian FAQ's PDF edition, unpacked from the package on first use."""
    packed = fetch_package("debian-faq", cache) / FAQ_SUBDIR / "debian-faq.en.pdf.gz"
    pdf = cache / "debian-faq.en.pdf"
    if not pdf.exists():
        pdf.write_bytes(gzip.decompress(packed.read_bytes()))
    return pdf


def make_scan(pdf: Path, pages: list[int], out: Path, dpi: int = OCR_DPI) -> Path:
    """An image-only PDF of `pages` of `pdf`: each rendered by pdftoppm, wrapped by img2pdf."""
    for tool in ("pdftoppm", "img2pdf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install poppler-utils img2pdf")
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for page in pages:
            prefix = Path(tmp) / f"page{page:04d}"
            subprocess.run(
                ["pdftoppm", "-f", str(page), "-l", str(page), "-r", str(dpi), "-gray", "-png",
                 "-singlefile", str(pdf), str(prefix)],
                check=True,
            )  # fmt: skip
            images.append(f"{prefix}.png")
        subprocess.run(["img2pdf", *images, "-o", str(out)], check=True)
    return out


def text_layer(pdf: Path, pages: list[int]) -> list[str]:
    """The original pages' text layer as poppler's pdftotext reads it.

    Not pypdf's: on TeX's tightly justified lines pypdf drops the spaces between words
    ("Thesedistributionsare"), which would count against an OCR that reads them right.
    """
    return [
        subprocess.run(
            ["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for page in pages
    ]


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    text = text.replace("-\n", "")  # a word hyphenated across lines, in one edition only
    return " ".join(text.split())


def char_ratio(truth: str, read: str, spaces: bool = True) -> float:
    """Share of characters that match (difflib: 2 x matches / both lengths); without
    `spaces`, of the characters other than whitespace."""
    a, b = normalize(truth), normalize(read)
    if not spaces:
        a, b = a.replace(" ", ""), b.replace(" ", "")
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def tesseract_reader(threads: int) -> Callable[[bytes], str]:
    found = find_tesseract()
    if found is None:
        raise SystemExit("tesseract not found: apt-get install tesseract-ocr")
    # read_image sets OMP_THREAD_LIMIT=1 itself; more threads only by the environment.
    if threads != 1:
        print(f"note: tesseract runs with 1 thread as in ingest (--threads {threads} ignored)")
    return lambda image: read_image(found.path, image, "eng", OCR_DPI, 600, "bench")


def rapidocr_reader(threads: int) -> Callable[[bytes], str] | None:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        print("rapidocr left out: pip install rapidocr-onnxruntime")
        return None
    import numpy as np

    engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

    def read(image: bytes) -> str:
        header, pixels = image.split(b"\n", 1)
        _, width, height, _ = header.split()
        gray = np.frombuffer(pixels, dtype=np.uint8).reshape(int(height), int(width))
        result, _ = engine(np.stack([gray] * 3, axis=2))
        return "\n".join(line[1] for line in result or [])

    read(_blank())  # load the models before timing
    return read


def _blank() -> bytes:
    return b"P5 64 64 255\n" + bytes([255]) * 64 * 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pdf", type=Path, help="a PDF with a text layer (default: Debian FAQ)")
    parser.add_argument("--pages", default=",".join(map(str, DEFAULT_PAGES)))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import pypdfium2 as pdfium

    pdf = args.pdf or faq_pdf()
    pages = [int(p) for p in args.pages.split(",")]
    truth = text_layer(pdf, pages)
    with tempfile.TemporaryDirectory() as tmp:
        scan = make_scan(pdf, pages, Path(tmp) / "scan.pdf")
        document = pdfium.PdfDocument(scan.read_bytes())
        started = time.perf_counter()
        images = [render_page(document[n]) for n in range(len(pages))]
        render_s = (time.perf_counter() - started) / len(pages)
    readers = {"tesseract": tesseract_reader(args.threads)}
    rapid = rapidocr_reader(args.threads)
    if rapid is not None:
        readers["rapidocr"] = rapid
    print(f"{pdf.name} pages {args.pages} at {OCR_DPI} dpi; rendering {render_s:.2f} s/page")
    print(f"{'engine':<10} {'page':>5} {'chars':>6} {'ratio':>6} {'nospace':>8} {'s':>6}")
    summary = {}
    for engine, read in readers.items():
        ratios, bare, seconds = [], [], []
        for page, image, text in zip(pages, images, truth, strict=True):
            started = time.perf_counter()
            got = read(image)
            seconds.append(time.perf_counter() - started)
            ratios.append(char_ratio(text, got))
            bare.append(char_ratio(text, got, spaces=False))
            print(
                f"{engine:<10} {page:>5} {len(normalize(text)):>6} {ratios[-1]:>6.3f} "
                f"{bare[-1]:>8.3f} {seconds[-1]:>6.2f}"
            )
        summary[engine] = (
            statistics.mean(ratios),
            min(ratios),
            statistics.mean(bare),
            sum(seconds),
        )
    print(
        f"\n{'engine':<10} {'mean ratio':>10} {'min ratio':>10} {'nospace':>8} {'s/page':>7} "
        f"{'pages/s':>8}"
    )
    for engine, (mean, low, nospace, total) in summary.items():
        print(
            f"{engine:<10} {mean:>10.4f} {low:>10.4f} {nospace:>8.4f} {total / len(pages):>7.2f} "
            f"{len(pages) / total:>8.3f}"
        )
    if len(summary) == 2:
        (_, a), (_, b) = summary.items()
        print(f"\ntesseract / rapidocr: accuracy {a[0] / b[0]:.3f}x, speed {b[3] / a[3]:.2f}x")


if __name__ == "__main__":
    main()
