"""Build the real-corpus eval set from the Debian FAQ (Debian package `debian-faq`).

    python bench/build_debian_faq_eval.py [--cache DIR] [--out FILE]

Fetches the package with `apt-get download debian-faq` and unpacks it with `dpkg -x` into
the cache dir (default ~/.cache/rag-bench; run `apt-get update` once first), then writes
JSON lines for `rag eval`. The corpus is never committed; this script and its hand-written
questions are. Four kinds of lines, with a "kind" field the bench reports by:

- "title": each section titled as a question, asked as titled (without its number); the
  target is the section's chapter file and the first sentence of its answer.
- "paraphrase": questions written for this set in a user's words, each with a short
  answer phrase copied from the FAQ (checked here to occur in that file) and its file.
- "keyword": what people type into a search box (a command, package or file name and a
  word or two), with an answer phrase and file as above.
- "unanswerable": questions the FAQ does not answer; the right outcome is "not found".

The documents to ingest are the chapter files, FAQ_DIR/*.en.html (print_dir prints it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.ops.evaluation import contains_answer  # noqa: E402

DEFAULT_CACHE = Path("~/.cache/rag-bench").expanduser()
FAQ_SUBDIR = Path("usr/share/doc/debian/FAQ")
_NUMBERED = re.compile(r"^\d+(?:\.\d+)+\.\s+(.*)$")

# (question, answer phrase as the FAQ words it, chapter file)
PARAPHRASED = [
    ("Who started the Debian project, and when?", "created by Ian Murdock in 1993", "basic-defs"),
    (
        "Where does the name Debian come from?",
        "contraction of the names of Debra and Ian Murdock",
        "basic-defs",
    ),
    ("Which command tells me the Debian release I'm running?", "lsb_release -a", "software"),
    ("Which file holds the Debian version number?", "/etc/debian_version", "software"),
    ("The linker says it cannot find -lfoo. Which package am I missing?", "libfoo-dev", "software"),
    ("Which package gives me the compilers to build packages?", "build-essential", "software"),
    ("How can I play SWF movies?", "gnash and swfdec", "software"),
    ("My wifi card only has Windows drivers. What can I do?", "use ndiswrapper", "software"),
    (
        "Is there a client for voice over IP calls?",
        "ekiga is one of the popular clients",
        "software",
    ),
    ("How do I get manual pages in my own language?", "manpages-LANG packages", "software"),
    ("How can I stop apt from upgrading one package?", "apt-mark hold package_name", "pkg-basics"),
    ("How do I download the source code of a package?", "apt-get source foo", "pkg-basics"),
    ("Which devscripts command builds my package?", "debuild -us -uc", "pkg-basics"),
    (
        "How do I replace /bin/login with my own build so upgrades leave it alone?",
        "dpkg-divert --divert /bin/login.debian /bin/login",
        "customizing",
    ),
    (
        "How do I pick a different default window manager?",
        "update-alternatives --config x-window-manager",
        "customizing",
    ),
    ("Where is the system-wide paper size setting kept?", "/etc/papersize", "customizing"),
    (
        "How do I let a user use the CD drive without touching device permissions?",
        "adduser user group",
        "customizing",
    ),
    (
        "Which init system does a default install use?",
        "uses systemd as the implementation of init",
        "customizing",
    ),
    (
        "How do I keep a service from starting at boot?",
        "systemctl disable service.service",
        "customizing",
    ),
    (
        "How long does a package wait in unstable before it moves to testing?",
        "threshold is 5 days",
        "choosing",
    ),
    ("Can I go back from unstable to stable later?", "it is a one way process", "choosing"),
    (
        "What should I run on an internet-facing server?",
        "by far the strongest and safest choice",
        "choosing",
    ),
    (
        "What is the codename of unstable?",
        "unstable is a permanent symbolic link to sid",
        "ftparchives",
    ),
    (
        "Which Toy Story character is Debian 10 named after?",
        "buster (Debian 10) was Andy's pet dog",
        "ftparchives",
    ),
    ("Who chose the Toy Story release names?", "Bruce Perens", "ftparchives"),
    (
        "What is the experimental distribution for?",
        "Experimental is used for packages which are still being developed",
        "ftparchives",
    ),
    (
        "What goes into the contrib section?",
        "depend on a package that is not freely distributable",
        "ftparchives",
    ),
    (
        "Can I install .rpm files on Debian?",
        "package is used to convert between different package formats",
        "compatibility",
    ),
    (
        "Where do I put programs I compile myself?",
        "place the source code for your program in /usr/local/src/",
        "compatibility",
    ),
    (
        "Which standard does Linux follow for source compatibility with Unix?",
        "POSIX.1 (IEEE Standard 1003.1-1990)",
        "compatibility",
    ),
    (
        "Can Debian run on a FreeBSD kernel?",
        "kfreebsd-amd64 and kfreebsd-i386 ports",
        "compatibility",
    ),
    (
        "When was the m68k port dropped?",
        "m68k architecture was dropped in the Etch (Debian 4.0) release",
        "compatibility",
    ),
    ("How do I remove an old kernel?", "dpkg --purge linux-image-NNN", "kernel"),
    ("What tool helps me file a bug report?", "You can use the package reportbug", "support"),
    (
        "Do I need permission to sell Debian CDs?",
        "You do not need permission to distribute anything we have released",
        "redistributing",
    ),
    (
        "Which US non-profit takes donations for Debian?",
        "Software in the Public Interest (SPI) is an IRS 501(c)(3) non-profit organization",
        "contributing",
    ),
    (
        "Who maintains this FAQ now?",
        "The current maintainer is Javier Fernandez-Sanguino",
        "faqinfo",
    ),
    ("Where do I send corrections to the FAQ?", "doc-debian@packages.debian.org", "faqinfo"),
    (
        "What is the difference between apt upgrade and full-upgrade?",
        "The full-upgrade command is less conservative",
        "pkgtools",
    ),
    ("How do I list the packages that have updates?", "apt list --upgradable", "pkgtools"),
    ("Which package does a given file belong to?", "dpkg --search foo", "pkgtools"),
    ("How do I see which files a package installed?", "dpkg --listfiles foo", "pkgtools"),
    ("How can I find a file in packages I have not installed?", "apt-file search foo", "pkgtools"),
    (
        "Is there a graphical package manager?",
        "synaptic is a graphical package manager",
        "pkgtools",
    ),
    (
        "How can a program be upgraded while it is running?",
        "supports replacing files even while they're being used",
        "pkgtools",
    ),
    ("How do I install a .deb file I downloaded?", "dpkg --install foo_VVV-RRR.deb", "pkgtools"),
    (
        "Can I install from a small image and get the rest over the network?",
        "download a small CD image file",
        "getting-debian",
    ),
    ("Can I install Debian from a USB stick?", "booting from USB memory stick", "getting-debian"),
    (
        "Does stable get new features after release?",
        "it will only get security updates",
        "getting-debian",
    ),
]

# What people type into a search box: a command, a package or a file name, a few words.
KEYWORDS = [
    ("apt-mark hold", "apt-mark hold package_name", "pkg-basics"),
    ("dpkg --get-selections", "dpkg --get-selections", "pkg-basics"),
    ("deb-src lines", "deb-src", "pkg-basics"),
    ("debuild -us -uc", "debuild -us -uc", "pkg-basics"),
    ("dpkg-divert", "dpkg-divert --divert /bin/login.debian /bin/login", "customizing"),
    (
        "update-alternatives x-window-manager",
        "update-alternatives --config x-window-manager",
        "customizing",
    ),
    ("dpkg-scanpackages", "dpkg-scanpackages BIN_DIR OVERRIDE_FILE", "customizing"),
    ("libpaper1 papersize", "/etc/papersize", "customizing"),
    ("systemctl get-default", "systemctl get-default", "customizing"),
    ("rc.local", "/etc/rc.local", "customizing"),
    ("sysvinit-core inittab", "sysvinit-core package", "customizing"),
    ("file-rc runlevel.conf", "/etc/runlevel.conf", "customizing"),
    ("lsb_release", "lsb_release -a", "software"),
    ("/etc/debian_version", "/etc/debian_version", "software"),
    ("ld: cannot find -lfoo", "libfoo-dev", "software"),
    ("build-essential", "build-essential package", "software"),
    ("ndiswrapper", "use ndiswrapper", "software"),
    ("gnash swfdec", "gnash and swfdec", "software"),
    ("ekiga SIP H.323", "ekiga is one of the popular clients", "software"),
    ("googleearth-package", "googleearth-package", "software"),
    ("kfreebsd", "kfreebsd-amd64 and kfreebsd-i386 ports", "compatibility"),
    (
        "m68k Etch",
        "m68k architecture was dropped in the Etch (Debian 4.0) release",
        "compatibility",
    ),
    ("FIPS 151-2 Unifix", "FIPS 151-2", "compatibility"),
    (
        "alien rpm deb",
        "package is used to convert between different package formats",
        "compatibility",
    ),
    ("reportbug", "You can use the package reportbug", "support"),
    ("apt-file search", "apt-file search foo", "pkgtools"),
    ("dpkg --listfiles", "dpkg --listfiles foo", "pkgtools"),
    ("dlocate", "dlocate -S foo", "pkgtools"),
    ("start-stop-daemon", "start-stop-daemon", "pkgtools"),
    ("tasksel", "Tasks can be installed through the tasksel program", "pkgtools"),
    ("dpkg-deb --extract", "dpkg-deb --extract foo_VVV-RRR.deb", "pkgtools"),
    ("SPI 501(c)(3)", "IRS 501(c)(3) non-profit organization", "contributing"),
    ("debian.ch donations", "debian.ch", "contributing"),
]

UNANSWERABLE = [
    "What is the capital of Australia?",
    "How do I bake sourdough bread?",
    "Who won the 2018 football World Cup?",
    "How do I renew my passport?",
    "What does a Red Hat Enterprise Linux subscription cost?",
    "How do I configure VLANs on a Cisco switch?",
    "At what temperature does water boil on Mount Everest?",
    "How much memory does Photoshop need?",
    "How do I enable a Wayland session in GNOME?",
    "How do I set up a printer with CUPS?",
    "What is the best recipe for lasagne?",
    "How do I reset a forgotten Windows password?",
]


class _Sections(HTMLParser):
    """(title, text) of each h2-h5 section of a DocBook chapter page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[list[str]] = []
        self.in_title = False
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3", "h4", "h5"):
            self.in_title = True
            self.sections.append(["", ""])
        elif tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3", "h4", "h5"):
            self.in_title = False
        elif tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data: str) -> None:
        # Text before the first section (the chapter's table of contents) is not kept.
        if not self.sections or self.skip:
            return
        self.sections[-1][0 if self.in_title else 1] += data


def fetch_package(package: str, cache: Path) -> Path:
    """Where `package`'s files are unpacked under `cache`, downloading it with
    `apt-get download` and unpacking it with `dpkg -x` unless done already."""
    root = cache / package
    if (root / ".unpacked").exists():
        return root
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: the {package} corpus needs a Debian-based system")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True
        )
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if done.returncode != 0 or not debs:
            sys.exit(f"apt-get download {package} failed (run apt-get update?): {done.stderr}")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    # A marker rather than a file of the package: an interrupted unpack is redone.
    (root / ".unpacked").touch()
    return root


def fetch_corpus(cache: Path) -> Path:
    """The FAQ directory, downloading and unpacking the package on first use."""
    faq = cache / "debian-faq" / FAQ_SUBDIR
    # Caches unpacked before the marker existed are complete when they hold the chapters.
    if any(faq.glob("*.en.html")):
        return faq
    return fetch_package("debian-faq", cache) / FAQ_SUBDIR


def first_sentence(text: str, max_words: int = 25) -> str:
    words = " ".join(text.split()).split(" ")
    for n, word in enumerate(words):
        if n >= 5 and word.endswith((".", "?", "!", ":")):
            return " ".join(words[: n + 1])
    return " ".join(words[:max_words])


def build_questions(faq: Path) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    texts = {}
    for page in sorted(faq.glob("*.en.html")):
        html = page.read_text(encoding="utf-8", errors="replace")
        parser = _Sections()
        parser.feed(html)
        texts[page.name.removesuffix(".en.html")] = " ".join(t for s in parser.sections for t in s)
        for title, body in parser.sections:
            match = _NUMBERED.match(" ".join(title.split()))
            if not match or not match.group(1).endswith("?") or len(body.split()) < 5:
                continue
            lines.append(
                {
                    "question": match.group(1),
                    "answer": first_sentence(body),
                    "source": f"FAQ/{page.name}",
                    "kind": "title",
                }
            )
    for kind, rows in (("paraphrase", PARAPHRASED), ("keyword", KEYWORDS)):
        for question, answer, chapter in rows:
            if not contains_answer(texts.get(chapter, ""), answer):
                sys.exit(f"answer {answer!r} not found in {chapter}.en.html: fix {kind}")
            lines.append(
                {
                    "question": question,
                    "answer": answer,
                    "source": f"FAQ/{chapter}.en.html",
                    "kind": kind,
                }
            )
    lines += [{"question": q, "kind": "unanswerable"} for q in UNANSWERABLE]
    return lines


def build(cache: Path = DEFAULT_CACHE, out: Path | None = None) -> tuple[Path, Path]:
    """(FAQ dir to ingest, eval file) — builds both when missing."""
    faq = fetch_corpus(cache)
    out = out or cache / "debian-faq-questions.jsonl"
    lines = build_questions(faq)
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return faq, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    faq, out = build(args.cache, args.out)
    kinds: dict[str, int] = {}
    for line in out.read_text().splitlines():
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"wrote {out}: {kinds}")
    print(f"ingest with: rag ingest {faq}/*.en.html --collection debian-faq")


if __name__ == "__main__":
    main()
