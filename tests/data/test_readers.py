"""Readers (`mtl_st.data.readers`): CoNLL files (the real CoNLL-2003 and WNUT-17 where ../shared/data has them),
IOB1 to BIO, and the errors that name the file and line."""

from __future__ import annotations

from collections import Counter

import pytest

from mtl_st.data.readers import convert_iob1_to_bio, read_conll
from mtl_st.errors import DataError
from tests.utils import shared_file


# ----------------------------------------------------------------------------- real files
def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) chunks of a BIO sequence (a B- or a type change starts a chunk)."""
    chunks, current = [], None
    for i, tag in enumerate(tags + ["O"]):
        starts = tag.startswith("B-") or (tag.startswith("I-") and (current is None or current[0] != tag[2:]))
        if current is not None and (tag == "O" or starts):
            chunks.append((current[0], current[1], i))
            current = None
        if starts:
            current = (tag[2:], i)
    return chunks


def test_conll2003_testb_counts_after_iob1_to_bio():
    sentences = read_conll(shared_file("conll2003", "eng.testb"), tag_scheme="iob1")
    assert len(sentences) == 3453
    assert sum(len(s["tokens"]) for s in sentences) == 46435
    assert all(len(s["tokens"]) == len(s["tags"]) for s in sentences)
    assert not any(t == "-DOCSTART-" for s in sentences for t in s["tokens"])
    counts = Counter(chunk[0] for s in sentences for chunk in entities(s["tags"]))
    assert counts == {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    # After conversion every entity starts with B- (BIO), so B- tags count the entities.
    assert sum(tag.startswith("B-") for s in sentences for tag in s["tags"]) == 5648
    try:
        from seqeval.metrics.sequence_labeling import get_entities
    except ImportError:
        return
    assert Counter(e[0] for s in sentences for e in get_entities(s["tags"])) == counts


def test_conll2003_without_conversion_keeps_iob1():
    sentences = read_conll(shared_file("conll2003", "eng.testb"))
    tags = Counter(tag for s in sentences for tag in s["tags"])
    assert tags["B-PER"] == 0 and tags["I-PER"] == 2773 and tags["B-MISC"] == 9


def test_wnut17_train_lone_tab_separators():
    sentences = read_conll(shared_file("wnut17", "wnut17train.conll"))
    assert len(sentences) == 3394
    assert sum(len(s["tokens"]) for s in sentences) == 62730
    tags = {tag for s in sentences for tag in s["tags"]}
    assert len(tags) == 13
    assert sum(tag.startswith("B-") for s in sentences for tag in s["tags"]) == 1975
    assert sentences[0]["tokens"][0] == "@paulwalk"


# ----------------------------------------------------------------------------- IOB1 to BIO
@pytest.mark.parametrize(
    "iob1, bio",
    [
        (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),  # start of sentence
        (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"]),  # I- after O
        (["I-ORG", "B-ORG", "I-ORG"], ["B-ORG", "B-ORG", "I-ORG"]),  # B- after the same type stays
        (["I-ORG", "I-LOC", "O"], ["B-ORG", "B-LOC", "O"]),  # type change
        (["O", "O"], ["O", "O"]),
        ([], []),
    ],
)
def test_convert_iob1_to_bio(iob1, bio):
    assert convert_iob1_to_bio(iob1) == bio


# ----------------------------------------------------------------------------- CoNLL lines and errors
def test_read_conll_docstart_blank_and_whitespace_lines(tmp_path):
    path = tmp_path / "mini.conll"
    path.write_text(
        "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n \n\nPeter\tI-PER\nBlackburn\tI-PER\n\t\n"
        "Ünïcödé\tO\n",
        encoding="utf-8",
    )
    sentences = read_conll(path, tag_scheme="iob1")
    assert sentences == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "where": f"{path}:3"},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "where": f"{path}:7"},
        {"tokens": ["Ünïcödé"], "tags": ["O"], "where": f"{path}:10"},
    ]


def test_bom_before_first_token_and_docstart(tmp_path):
    path = tmp_path / "bom.conll"
    path.write_bytes("\ufeff-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n".encode("utf-8"))
    assert read_conll(path) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"], "where": f"{path}:3"}]
    path.write_bytes("\ufeffEU\tB-ORG\nrejects\tO\n".encode("utf-8"))
    assert read_conll(path)[0]["tokens"] == ["EU", "rejects"]


def test_read_conll_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects O\n\nlonely\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.conll:4\b.*lonely"):
        read_conll(path)


def test_read_conll_bad_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU\tB-ORG\nrejects\tX-ORG\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.conll:2\b.*'X-ORG'"):
        read_conll(path)


def test_space_inside_a_tab_separated_word_is_refused(tmp_path):
    path = tmp_path / "space.conll"
    path.write_text("Heading\tO\nNew York\tB-location\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: the word column 'New York' holds a space"):
        read_conll(path)


def test_read_conll_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.conll"):
        read_conll(tmp_path / "nope.conll")
