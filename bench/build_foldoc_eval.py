"""Build the FOLDOC eval set: the Free On-line Dictionary of Computing (Debian `dict-foldoc`).

    python bench/build_foldoc_eval.py [--cache DIR] [--entries N] [--questions N] [--seed S]

Fetches the package with `apt-get download dict-foldoc` and unpacks it with `dpkg -x` into
the cache dir (default ~/.cache/rag-bench; run `apt-get update` once first), reads the
dictd files (foldoc.index: headword, offset and length in dictd's base64; foldoc.dict.dz:
gzip-compatible), and writes

- a corpus of Markdown files, one per initial letter (foldoc-a.md ... foldoc-z.md and
  foldoc-0.md for digits and symbols), each entry under a `## term` heading with its text as
  FOLDOC words it. It is a seeded sample of `--entries` entries (15,254 headwords, about
  12,000 entries in all; the whole dictionary takes too long to embed on a laptop's CPU);
- JSON lines for `rag eval`, a seeded sample of questions over the sampled entries, each with
  one right answer: the entry's file and a phrase of its definition that no other entry of
  the corpus holds (checked here with the judge rag/ops/evaluation.py uses). Kinds:

  - "what-is": "What is <term>?"; the answer is the first 15 words of the entry's first
    definition sentence (markup, a leading "(ABBR)" and "(Or ...)" taken off).
  - "acronym": "What does <ACRONYM> stand for?" for entries whose definition opens with the
    expansion (its words' initials spell the acronym); the answer is the expansion.
  - "reverse": the question a user asks who knows the idea but not the word, "What is the
    term for <the first definition sentence>?", only for entries whose sentence names none
    of the entry's names (headword and aliases); the answer is as for "what-is".
  - "unanswerable": off-topic questions a computing dictionary does not answer.

Each entry gets at most one question. The corpus is never committed; this script is. The
bench ingests CORPUS_DIR/foldoc-*.md (2,500 entries: 27 files, 1.1 MB, 3,293 chunks; about
100-125 s to ingest on 2 shared cores).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.build_debian_faq_eval import DEFAULT_CACHE, fetch_package  # noqa: E402
from rag.ops.evaluation import contains_answer, words  # noqa: E402

PACKAGE = "dict-foldoc"
DICTD = Path("usr/share/dictd")
ENTRIES = 2500
QUESTIONS = 300
SEED = 20230119  # the package's release date; any fixed value makes the set reproducible
# dictd's base64 digits for offsets and lengths in the .index (big-endian, no padding).
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: n for n, c in enumerate(_B64)}

_DOMAIN = re.compile(r"^\s*<[^<>]*>\s*")  # "<programming, algorithm>"
_SENSE = re.compile(r"^\s*\d+\.\s+")  # "1. " before each sense of a word
_ALSO = re.compile(r"\((?:or|also)\b[^()]*\)\s*", re.IGNORECASE)  # "(Or "flakey")" names it
# "/flay'm*j/", "/sheen'yu-*l/": between spaces, unlike "TCP/IP" or "Assisted/Managed".
_PRONOUNCE = re.compile(r"(?<!\S)/[^/\s][^/]*/(?!\S)")
# "(ADAM) A suite of ...", "(MIT) The ...", "[alt.fan.warlord] Big Ugly ASCII Font".
_LEADING_PAREN = re.compile(r"^(?:\([^()]*\)|\[[^\[\]]*\])\s*")
_XREF = re.compile(r"[{}]")
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z(\"{])")
_ACRONYM = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")
MAX_ANSWER_WORDS = 15  # of the definition, as the answer phrase a hit must hold
MAX_REVERSE_WORDS = 30  # longer definitions are not a question anyone types

UNANSWERABLE = [
    "What is the capital of Australia?",
    "How do I bake sourdough bread?",
    "Who won the 2018 football World Cup?",
    "How do I renew my passport?",
    "At what temperature does water boil on Mount Everest?",
    "What is the best recipe for lasagne?",
    "How many players are on a rugby union team?",
    "When did the Roman Empire fall?",
    "How often should I water a cactus?",
    "What is the tallest mountain in Africa?",
]


@dataclass(frozen=True, slots=True)
class Entry:
    names: tuple[str, ...]  # headword lines as the entry writes them, first is the title
    body: str  # the definition, dedented, FOLDOC's markup ({cross refs}, <domain>) kept

    @property
    def title(self) -> str:
        return self.names[0]

    @property
    def letter(self) -> str:
        first = self.title[:1].lower()
        return first if "a" <= first <= "z" else "0"

    @property
    def file(self) -> str:
        return f"foldoc-{self.letter}.md"

    def markdown(self) -> str:
        also = f"Also: {', '.join(self.names[1:])}\n\n" if len(self.names) > 1 else ""
        return f"## {self.title}\n\n{also}{self.body}\n\n"


def b64_number(digits: str) -> int:
    n = 0
    for c in digits:
        n = n * 64 + _B64_VALUE[c]
    return n


def read_dictionary(root: Path) -> list[Entry]:
    """Every entry of the dictd database, in index order; aliases share one entry."""
    index = (root / DICTD / "foldoc.index").read_text(encoding="utf-8")
    with gzip.open(root / DICTD / "foldoc.dict.dz") as f:  # dictzip is gzip with a seek table
        data = f.read()
    entries: list[Entry] = []
    seen: set[int] = set()
    for line in index.splitlines():
        headword, offset, length = line.split("\t")
        start = b64_number(offset)
        # dictd's own metadata ("00-database-info" ...), and aliases of an entry read already.
        if headword.startswith("00-database") or start in seen:
            continue
        seen.add(start)
        text = data[start : start + b64_number(length)].decode("utf-8", errors="replace")
        head, _, body = text.strip("\n").partition("\n\n")
        names = tuple(dict.fromkeys(n.strip() for n in head.splitlines() if n.strip()))
        lines = body.rstrip().splitlines()
        indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
        body = "\n".join(x[indent:] for x in lines).strip()
        if names and body:
            entries.append(Entry(names, body))
    return entries


def sample_entries(entries: list[Entry], n: int, seed: int) -> list[Entry]:
    """A seeded sample of n entries, in alphabetical order as a dictionary prints them."""
    chosen = random.Random(seed).sample(entries, min(n, len(entries)))
    return sorted(chosen, key=lambda e: (e.title.lower(), e.title))


def write_corpus(entries: list[Entry], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("foldoc-*.md"):
        stale.unlink()
    by_file: dict[str, list[Entry]] = {}
    for entry in entries:
        by_file.setdefault(entry.file, []).append(entry)
    for name, group in by_file.items():
        letter = group[0].letter
        title = "Digits and symbols" if letter == "0" else letter.upper()
        text = f"# FOLDOC: {title}\n\n" + "".join(e.markdown() for e in group)
        (out_dir / name).write_text(text, encoding="utf-8")


def plain(text: str) -> str:
    """FOLDOC markup out of a sentence: cross-reference braces, pronunciations, spacing."""
    return " ".join(_PRONOUNCE.sub(" ", _XREF.sub("", text)).split())


def sentences(entry: Entry) -> list[str]:
    """The first paragraph's sentences, the domain tag and sense number taken off."""
    first = " ".join(entry.body.split("\n\n", 1)[0].split())
    # "1. <jargon> ..." and "<jargon> 1. ..." both occur.
    for _ in range(2):
        first = _SENSE.sub("", _DOMAIN.sub("", first, count=1), count=1)
    return [s.strip() for s in _SENTENCE.split(first) if s.strip()]


def opening(entry: Entry) -> str | None:
    """The entry's first sentence in plain words, without the leading "(ADAM)" or
    "(Or ...)" that restates the entry's own name; None when it is a citation or a stub."""
    first = sentences(entry)[:1]
    if not first or "[" in first[0]:
        return None
    text = _ALSO.sub("", _LEADING_PAREN.sub("", plain(first[0])))
    return text if len(text.split()) >= 5 else None


def names_in(entry: Entry, text: str) -> bool:
    """Whether `text` says one of the entry's names (as whole words, any case)."""
    have = " " + " ".join(words(text)) + " "
    return any(f" {' '.join(words(name))} " in have for name in entry.names if words(name))


def expansion(entry: Entry) -> str | None:
    """The words an acronym stands for, when the definition opens with them."""
    if not _ACRONYM.match(entry.title):
        return None
    first = sentences(entry)[:1]
    if not first or not first[0].endswith("."):
        return None
    spelled = _LEADING_PAREN.sub("", plain(first[0])).rstrip(".")
    if "(" in spelled or not 2 <= len(spelled.split()) <= 10:
        return None
    initials = "".join(w[0] for w in re.split(r"[\s\-/]+", spelled) if w and w[0].isalnum())
    # Every letter of the acronym in order among the initials, the first one first
    # ("Function Level" for FL; "ANSI" for "American National Standards Institute").
    letters = iter(initials.upper())
    if initials[:1].upper() != entry.title[0] or not all(c in letters for c in entry.title):
        return None
    return spelled


def as_clause(sentence: str, common: set[str]) -> str:
    """`sentence` to follow "the term for": its first word lower-cased unless it is a name
    ("A piece of code" -> "a piece of code"; "Microsoft's ..." stays)."""
    first = sentence.split(" ", 1)[0]
    if first[:1].isupper() and first[1:] == first[1:].lower() and first.lower() in common:
        sentence = first.lower() + sentence[len(first) :]
    return sentence.rstrip(".")


def unique(answer: str, target: Entry, corpus: list[tuple[Entry, str, set[str]]]) -> bool:
    """Whether the target holds the answer and no other entry of the corpus does, by the
    judge `rag eval` uses (the word sets only skip entries that cannot hold it)."""
    wanted = set(words(answer))
    holders = [
        e
        for e, text, have in corpus
        if len(wanted & have) >= 0.8 * len(wanted) and contains_answer(text, answer)
    ]
    return holders == [target]


def build_questions(entries: list[Entry], n: int, seed: int) -> list[dict[str, object]]:
    """n questions on distinct entries, seeded: a quarter acronyms (the rarest kind: about
    one entry in thirty qualifies), the rest what-is and reverse in equal parts."""
    rng = random.Random(seed + 1)
    corpus = [(e, e.markdown(), set(words(e.markdown()))) for e in entries]
    # Words the dictionary itself writes in lower case are common words, not names.
    common = {w for e in entries for w in re.findall(r"\b[a-z]+\b", e.body)}
    order = list(entries)
    rng.shuffle(order)
    wanted = {"acronym": n // 4, "reverse": (n - n // 4) // 2}
    wanted["what-is"] = n - sum(wanted.values())
    made: dict[str, list[dict[str, object]]] = {kind: [] for kind in wanted}
    for entry in order:
        if not re.search(r"[A-Za-z].*[A-Za-z0-9]", entry.title):
            continue  # "!", "$1": not something one asks about in words
        candidates = []
        expanded = expansion(entry)
        if expanded:
            candidates.append(("acronym", f"What does {entry.title} stand for?", expanded))
        first = opening(entry)
        if first:
            answer = " ".join(first.split()[:MAX_ANSWER_WORDS])
            if len(first.split()) <= MAX_REVERSE_WORDS and not names_in(entry, first):
                clause = as_clause(first, common)
                # "To work interminably ..." defines a verb, "A piece of code ..." a noun.
                lead = "the word meaning " if clause.startswith("to ") else "the term for "
                if clause.startswith("said of "):  # "Said of an operation that ..."
                    lead = "the term "
                question = f"What is {lead}{clause}?"
                candidates.append(("reverse", question, answer))
            if not entry.title.endswith(("!", "?", ".")):  # "Get a life!", not a thing
                candidates.append(("what-is", f"What is {entry.title}?", answer))
        # The kind furthest below its share first, so each entry goes where it is needed.
        candidates.sort(key=lambda c: len(made[c[0]]) / max(1, wanted[c[0]]))
        for kind, question, answer in candidates:
            if len(made[kind]) < wanted[kind] and unique(answer, entry, corpus):
                made[kind].append(
                    {"question": question, "answer": answer, "source": entry.file, "kind": kind}
                )
                break
        if all(len(made[k]) >= wanted[k] for k in wanted):
            break
    lines = [line for kind in ("what-is", "acronym", "reverse") for line in made[kind]]
    return lines + [{"question": q, "kind": "unanswerable"} for q in UNANSWERABLE]


def build(
    cache: Path = DEFAULT_CACHE,
    out: Path | None = None,
    entries: int = ENTRIES,
    questions: int = QUESTIONS,
    seed: int = SEED,
) -> tuple[Path, Path]:
    """(corpus dir to ingest, eval file), rewritten from the unpacked package each time."""
    root = fetch_package(PACKAGE, cache)
    sample = sample_entries(read_dictionary(root), entries, seed)
    corpus_dir = cache / "foldoc-corpus"
    write_corpus(sample, corpus_dir)
    out = out or cache / "foldoc-questions.jsonl"
    lines = build_questions(sample, questions, seed)
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return corpus_dir, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--entries", type=int, default=ENTRIES)
    parser.add_argument("--questions", type=int, default=QUESTIONS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    corpus, out = build(args.cache, args.out, args.entries, args.questions, args.seed)
    kinds: dict[str, int] = {}
    for line in out.read_text().splitlines():
        kind = json.loads(line)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    files = sorted(corpus.glob("foldoc-*.md"))
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files ({size / 1e6:.1f} MB) in {corpus} and {out}: {kinds}")
    print(f"ingest with: rag ingest {corpus} --collection foldoc")


if __name__ == "__main__":
    main()
