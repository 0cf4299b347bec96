"""Test inputs generated at test time: small realistic corpora and every kind of bad file."""

from __future__ import annotations

import gzip
import random
import shutil
import zlib
from pathlib import Path

import pytest

from bench.build_debian_faq_eval import DEFAULT_CACHE, fetch_package
from tests.pdfwrite import write_pdf

_WORDS = [
    "kestrel", "harbor", "freight", "manifest", "invoice", "ledger", "audit", "crane",
    "berth", "tide", "pilot", "customs", "container", "reefer", "gantry", "quay", "bollard",
    "hawser", "draft", "ballast", "tonnage", "schedule", "dispatch", "warehouse", "pallet",
    "forklift", "inventory", "carrier", "vessel", "anchor", "signal", "beacon", "radio",
]  # fmt: skip


def debian_document(package: str, path: str) -> Path:
    """A real document from a Debian package of manuals (debian-faq, gnuplot-doc, ...),
    fetched with apt-get download into ~/.cache/rag-bench once; a `.gz` file is unpacked
    beside it. Skips where there is no apt-get (not a Debian system)."""
    if shutil.which("apt-get") is None:
        pytest.skip(f"the {package} corpus comes from Debian's apt-get")
    try:
        root = fetch_package(package, DEFAULT_CACHE)
    except SystemExit as e:  # the bench helper's way of saying the download failed
        pytest.fail(str(e))
    found = root / path
    if found.suffix != ".gz":
        return found
    unpacked = DEFAULT_CACHE / f"{package}-{found.name.removesuffix('.gz')}"
    if not unpacked.exists():
        unpacked.write_bytes(gzip.decompress(found.read_bytes()))
    return unpacked


def sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def write_corpus(root: Path, count: int = 30, seed: int = 0) -> list[Path]:
    """`count` small documents in every format we read, each a few chunks long."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for n in range(count):
        kind = ("md", "txt", "html", "pdf", "rst")[n % 5]
        path = root / f"doc{n:02d}.{kind}"
        sections = [(f"Topic {n}.{i}", paragraph(rng, rng.randint(1, 4))) for i in range(3)]
        # A word found in this document only, for full-text search.
        sections[0] = (sections[0][0], f"Reference code kx{n:03d}q. {sections[0][1]}")
        if kind == "md":
            path.write_text(f"# Doc {n}\n\n" + "".join(f"## {t}\n\n{b}\n\n" for t, b in sections))
        elif kind == "txt":
            path.write_text("\n\n".join(b for _, b in sections))
        elif kind == "html":
            body = "".join(f"<h2>{t}</h2><p>{b}</p>" for t, b in sections)
            path.write_text(
                f"<html><head><title>Doc {n}</title><script>var x = 1;</script></head>"
                f"<body><nav>Home | Next</nav><main><h1>Doc {n}</h1>{body}</main></body></html>"
            )
        elif kind == "rst":
            text = f"Doc {n}\n{'=' * 8}\n\n"
            text += "".join(f"{t}\n{'-' * len(t)}\n\n{b}\n\n" for t, b in sections)
            path.write_text(text)
        else:
            write_pdf(path, [b for _, b in sections])
        paths.append(path)
    return paths


def write_bomb_pdf(path: Path, inflated_bytes: int = 80_000_000) -> None:
    """A PDF of ~80 KB whose one content stream inflates past pypdf's 75 MB limit."""
    stream = zlib.compress(b" " * inflated_bytes, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        # A font resource, so text extraction really decodes the stream.
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))


def write_encrypted_pdf(path: Path, user_password: str) -> None:
    """AES-encrypted; an empty user password means anyone may open it (permissions only)."""
    from pypdf import PdfWriter

    plain = path.with_suffix(".plain")
    write_pdf(plain, ["The vault combination is written on page one."])
    writer = PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-128")
    writer.write(path)
    plain.unlink()


def write_bad_inputs(root: Path) -> dict[str, str]:
    """One file per class of bad input; returns {file name: expected failure reason}.

    Files that must be indexed despite looking odd map to "" instead.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    good = root / "good.pdf"
    write_pdf(good, ["First page about cranes.", "Second page about tides.", "Third."])
    data = good.read_bytes()
    (root / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (root / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + rng.randbytes(4000))
    (root / "zero.pdf").write_bytes(b"")
    write_encrypted_pdf(root / "locked.pdf", "secret")
    write_encrypted_pdf(root / "permissions-only.pdf", "")
    write_bomb_pdf(root / "bomb.pdf")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.randbytes(2000))
    (root / "nul.md").write_bytes(b"# Title\n" + b"\x00\x01\x02\x03" * 500)
    (root / "empty.md").write_text("")
    long_line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200_000))
    (root / "one-line.txt").write_text(f"{long_line} end of the line")
    valid = "Grüße aus Köln, naïve café, Straße. " * 40
    (root / "broken-utf8.txt").write_bytes(valid.encode() + b"\xff\xc3(Ende")
    (root / "latin1.txt").write_bytes("Le café coûte 3 € à Gênes.".encode("cp1252"))
    (root / "utf16.txt").write_bytes("Tidal tables für den Hafen.".encode("utf-16"))
    return {
        "good.pdf": "",
        "truncated.pdf": "malformed",
        "corrupt.pdf": "malformed",
        "zero.pdf": "malformed",
        "locked.pdf": "encrypted",
        "permissions-only.pdf": "",
        "bomb.pdf": "limit",
        "image.txt": "binary",
        "nul.md": "binary",
        "empty.md": "no_text",
        "one-line.txt": "",
        "broken-utf8.txt": "",
        "latin1.txt": "",
        "utf16.txt": "",
    }
