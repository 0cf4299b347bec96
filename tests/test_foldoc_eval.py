"""bench/build_foldoc_eval.py on a tiny dictd database written here in dictd's own format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from bench.build_foldoc_eval import (
    DICTD,
    b64_number,
    build_questions,
    read_dictionary,
    write_corpus,
)
from rag.ops.evaluation import contains_answer, load_questions

ENTRIES = [
    (
        ["flag day"],
        "   <jargon> A software change that is neither forward- nor\n"
        "   backward-compatible, and which is costly to make and costly to reverse.\n\n"
        "   (1998-01-15)\n",
    ),
    (["LSB"], "   <data> Least Significant Bit.\n\n   (1996-01-01)\n"),
    (
        ["hash coding", "hashing"],
        '   <programming> (Or "hashing") A scheme for providing rapid access\n'
        "   to data items which are distinguished by some {key}.\n",
    ),
]


def b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def write_dictd(root: Path) -> None:
    data, index = b"", []
    for names, body in [(["00-database-short"], "   FOLDOC\n"), *ENTRIES]:
        text = ("\n".join(names) + "\n\n" + body + "\n").encode()
        # Every name is a headword of the index pointing at the same text, as dictfmt writes.
        index += [f"{name.lower()}\t{b64(len(data))}\t{b64(len(text))}" for name in names]
        data += text
    (root / DICTD).mkdir(parents=True)
    (root / DICTD / "foldoc.index").write_text("\n".join(sorted(index)) + "\n")
    (root / DICTD / "foldoc.dict.dz").write_bytes(gzip.compress(data))


def test_reads_dictd_base64_offsets_and_aliases(tmp_path: Path) -> None:
    assert b64_number("A") == 0 and b64_number("BA") == 64 and b64_number(b64(12345)) == 12345
    write_dictd(tmp_path)
    entries = {e.title: e for e in read_dictionary(tmp_path)}
    assert sorted(entries) == ["LSB", "flag day", "hash coding"]  # metadata left out
    assert entries["hash coding"].names == ("hash coding", "hashing")
    assert entries["flag day"].body.startswith("<jargon> A software change")


def test_questions_have_one_right_answer_in_the_written_corpus(tmp_path: Path) -> None:
    write_dictd(tmp_path)
    entries = read_dictionary(tmp_path)
    write_corpus(entries, tmp_path / "corpus")
    lines = build_questions(entries, 4, seed=1)
    answerable = [line for line in lines if line["kind"] != "unanswerable"]
    assert {line["kind"] for line in answerable} == {"acronym", "reverse", "what-is"}
    for line in answerable:
        text = (tmp_path / "corpus" / str(line["source"])).read_text()
        assert contains_answer(text, str(line["answer"]))
        if line["kind"] == "reverse":  # asked without the entry's names
            assert "hash" not in str(line["question"]).lower()
            assert "flag day" not in str(line["question"]).lower()
    acronym = next(line for line in answerable if line["kind"] == "acronym")
    assert acronym == {
        "question": "What does LSB stand for?",
        "answer": "Least Significant Bit",
        "source": "foldoc-l.md",
        "kind": "acronym",
    }
    out = tmp_path / "q.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert len(load_questions(out)) == len(lines)  # what `rag eval` reads
