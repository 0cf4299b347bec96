"""Build the paraphrase eval set: the GNU Coding Standards as a PDF (Debian `gnu-standards`).

    python bench/build_gnu_standards_eval.py [--cache DIR] [--out FILE]

Fetches the package with `apt-get download gnu-standards` and unpacks it with `dpkg -x` into
the cache dir (default ~/.cache/rag-bench; run `apt-get update` once first), writes the
90-page manual to CORPUS_DIR/standards.pdf and JSON lines for `rag eval`:

- "paraphrase": questions written for this set by reading the manual, phrased as a user
  asks them and kept clear of the words of the section's title (and mostly of the answer's
  own words), so that a retriever is not rewarded for matching headings. Each has its page
  and a short answer phrase copied from that page; the script checks, with the parser rag
  ingests with, that the page holds the phrase (the judge of rag/ops/evaluation.py), and fails
  naming the line otherwise.
- "unanswerable": questions about the same domain (GNU software, its maintainers and
  process) that this manual does not answer; the right outcome is "not found".

It stands for the common case of a manual in one PDF where each answer sits on one page.
The corpus is never committed; this script and its questions are.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_debian_faq_eval import DEFAULT_CACHE, fetch_package  # noqa: E402
from rag.ops.evaluation import contains_answer  # noqa: E402

PACKAGE = "gnu-standards"
PDF = Path("usr/share/doc/gnu-standards/standards.pdf.gz")
SOURCE = "standards.pdf"

# (question, answer phrase as the manual words it, 1-based PDF page)
PARAPHRASED = [
    (
        "Am I allowed to look at how a Unix tool is implemented while I write its GNU replacement?",
        "Don't in any circumstances refer to Unix source code",
        6,
    ),
    (
        "What must happen before I merge a large patch that somebody else wrote?",
        "so we can arrange to get the papers",
        6,
    ),
    (
        "Does a two-line fix from an outside person need signed forms?",
        "need papers for changes of a few lines here or there",
        6,
    ),
    (
        "Should my package's docs say that UNIX is a registered name of its owner?",
        "do not include any trademark acknowledgments",
        7,
    ),
    (
        "Can I shorten Microsoft's operating system to 'win' in my docs?",
        "write Windows in full, or abbreviate it to w",
        7,
    ),
    (
        "I need a compiled language that runs fast; what should I pick?",
        "the best language to use is C",
        7,
    ),
    (
        "Which interpreter should my program embed so that users can script it?",
        "The standard extensibility interpreter for GNU software is Guile",
        8,
    ),
    (
        "How can users switch off GNU additions that clash with ISO C or POSIX?",
        "include a --ansi, --posix, or --compatible option",
        8,
    ),
    (
        "What was going to be the original name of the variable that makes GNU tools "
        "follow POSIX to the letter?",
        "POSIX_ME_HARDER",
        11,
    ),
    (
        "Which part of the 1989 C language must never be used?",
        "do not ever use the trigraph feature of Standard C",
        9,
    ),
    (
        "For options known at build time, should I test them with the preprocessor or with "
        "ordinary C statements?",
        "the compiler is able to perform more extensive checking",
        10,
    ),
    (
        "In what units should df and du print sizes by default?",
        "What users want is units of 1k",
        11,
    ),
    (
        "Is it OK for my tool to cap how long an input line may be?",
        "Avoid arbitrary limits on the length or number of any data structure",
        11,
    ),
    ("What should a batch tool do when memory allocation fails?", "make that a fatal error", 12),
    (
        "Why shouldn't my program tell the shell how many problems it hit through its return code?",
        "exit status values are limited to 8 bits",
        12,
    ),
    ("Where should my program put its scratch files?", "check the TMPDIR environment variable", 12),
    (
        "What should the code do when a sanity check finds a state that should never happen?",
        "just abort. There is usually no point in printing any message",
        12,
    ),
    (
        "Which function should parse the flags given to my program?",
        "Use getopt_long to decode arguments",
        12,
    ),
    (
        "How long must the common beginning of every public symbol in my library be?",
        "more than two characters long",
        13,
    ),
    (
        "How should a compiler's diagnostics point at the offending line?",
        "sourcefile:lineno: message",
        13,
    ),
    (
        "When a diagnostic points at a position within a line, is the first position 0 or 1?",
        "column numbers should start from 1",
        13,
    ),
    (
        "How wide is a tab character when working out a position for a diagnostic?",
        "assuming tab stops every 8 columns",
        13,
    ),
    (
        "After the program and file name in a diagnostic, should the text be capitalized?",
        "should not begin with a capital letter",
        14,
    ),
    (
        "Is it fine for my tool to act differently depending on what it was called as?",
        "should behave the same regardless of which of those names is used",
        14,
    ),
    (
        "My program emits raw binary; what should it do when its output goes to the screen?",
        "when the output is a terminal and give an error message instead",
        14,
    ),
    (
        "How can a program locate the support files it needs at run time?",
        "The way to find them starts with looking at argv[0]",
        15,
    ),
    (
        "Which widget libraries are recommended for a windowed application?",
        "using the GTK+ toolkit or the GNUstep toolkit",
        16,
    ),
    (
        "Should the name of the file my program writes be given as a plain argument?",
        "output files would be specified using options",
        16,
    ),
    (
        "What should be shown when someone asks which release of my tool they have?",
        "print information about its name, version, origin and legal status",
        16,
    ),
    (
        "When my program reports its release, should it also list each dependency's release?",
        "do not mention all of the libraries that the program uses",
        17,
    ),
    (
        "Must I list every year in the copyright line my program prints?",
        "only needs to mention the most recent year",
        17,
    ),
    (
        "In a localized build, may the word Copyright be shown in the user's language?",
        "Do not translate it into another language",
        18,
    ),
    (
        "Which numeric identifier for SNMP and LDAP has been registered for GNU?",
        "1.3.6.1.4.1.11591 has been assigned to the GNU Project",
        35,
    ),
    (
        "My tool needs only a handful of megabytes of RAM; should I work to shrink that?",
        "making any effort to reduce memory usage",
        36,
    ),
    (
        "Is it worth releasing every allocation just before the process ends so that leak "
        "checkers stop complaining?",
        "free it simply to silence such a tool",
        36,
    ),
    (
        "Can my program keep its lock and score files under the system's read-only directories?",
        "these files should not be stored in /usr or /etc",
        37,
    ),
    ("How wide may a line of C code be?", "79 characters or less", 37),
    (
        "Where do I place the curly bracket that begins a function's code?",
        "the body of a C function in column one",
        37,
    ),
    (
        "How should I split the words inside identifiers instead of mixing capitals?",
        "use underscores to separate words in a name",
        42,
    ),
    (
        "Can I call malloc and store its result within the test of a conditional?",
        "avoid assignments inside if-conditions",
        42,
    ),
    (
        "What is the preferred way to name fixed numbers so that GDB can show them?",
        "use enum rather than #define",
        43,
    ),
    (
        "If my employer funded writing the manual, should it be named as the writer?",
        "do not cite the company as an author",
        52,
    ),
    (
        "In the file listing user-visible changes, do new items go at the top or the bottom?",
        "add items to the front of the file",
        52,
    ),
    (
        "What should I do when my release notes file grows huge?",
        "move some of the older items into a file named ONEWS",
        52,
    ),
    (
        "Why bother recording every edit made to the sources?",
        "people investigating bugs in the future will know about the changes",
        52,
    ),
    (
        "Can I consult a proprietary book about the program while writing its manual?",
        "ok to use these documents for reference",
        59,
    ),
    (
        "Should the released sources include the header that the setup script generates?",
        "should not contain a file named config.h",
        59,
    ),
    (
        "What file name should the compressed archive of my release have?",
        "gzipped tar file with the name foo-69.96.tar.gz",
        77,
    ),
    (
        "What mode bits should the folders inside my release tarball carry?",
        "world-searchable (octal mode 755)",
        78,
    ),
    (
        "Is it OK for the release archive to hold symlinks?",
        "include any symbolic links in the distribution itself",
        78,
    ),
]

# On the domain (GNU software, its maintainers and process), not answered by this manual.
UNANSWERABLE = [
    "Does the FSF pay the maintainers of GNU packages?",
    "Which continuous integration service should GNU projects use?",
    "How do I report a security vulnerability in a GNU package privately?",
    "What code of conduct applies on GNU mailing lists?",
    "How do I apply to have my program become an official GNU package?",
    "How much disk space does a full GNU system installation need?",
    "When was the GNU Project founded?",
    "Which web framework should GNU web applications use?",
    "How many maintainers must approve a patch before it is merged?",
    "What is the maximum number of lines a C function may have?",
]


def write_corpus(cache: Path) -> Path:
    """The corpus dir holding standards.pdf, unpacked from the package on first use."""
    corpus = cache / "gnu-standards-corpus"
    pdf = corpus / SOURCE
    if not pdf.exists():
        root = fetch_package(PACKAGE, cache)
        corpus.mkdir(parents=True, exist_ok=True)
        pdf.write_bytes(gzip.decompress((root / PDF).read_bytes()))
    return corpus


def page_texts(pdf: Path) -> dict[int, str]:
    """Each page's text as rag's ingest extracts it."""
    from ingest.pdf import parse_pdf_bytes

    parsed = parse_pdf_bytes(pdf.read_bytes(), pdf.name)
    return {s.page: s.text for s in parsed.sections if s.page is not None}


def build_questions(
    pdf: Path,
    paraphrased: list[tuple[str, str, int]] = PARAPHRASED,
    unanswerable: list[str] = UNANSWERABLE,
) -> list[dict[str, object]]:
    """The eval lines; exits naming the question whose page does not hold its answer."""
    pages = page_texts(pdf)
    lines: list[dict[str, object]] = []
    for question, answer, page in paraphrased:
        if not contains_answer(pages.get(page, ""), answer):
            sys.exit(f"{pdf} page {page} does not hold {answer!r} (for {question!r})")
        lines.append(
            {
                "question": question,
                "answer": answer,
                "source": SOURCE,
                "page": page,
                "kind": "paraphrase",
            }
        )
    return lines + [{"question": q, "kind": "unanswerable"} for q in unanswerable]


def build(cache: Path = DEFAULT_CACHE, out: Path | None = None) -> tuple[Path, Path]:
    """(corpus dir to ingest, eval file)."""
    corpus = write_corpus(cache)
    out = out or cache / "gnu-standards-questions.jsonl"
    lines = build_questions(corpus / SOURCE)
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return corpus, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    corpus, out = build(args.cache, args.out)
    kinds: dict[str, int] = {}
    for line in out.read_text().splitlines():
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"wrote {out}: {kinds}")
    print(f"ingest with: rag ingest {corpus / SOURCE} --collection gnu-standards")


if __name__ == "__main__":
    main()
