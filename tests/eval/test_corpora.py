"""The named texts: what each extracts, that calibration and evaluation never share a document,
and that a mix calibrates in equal parts."""
import io
import tarfile

import pytest
import torch

from lowbit.calibration import corpora
from lowbit.calibration.text import calibration_samples, load_texts, tokenize
from lowbit.errors import LowbitError

PAGE = """<html><body><ul class="docnav top"><li class="previous"><a href="x.html">Prev</a></li></ul>
<div class="section"><h2 class="title">6.3. The <code>apt-cache</code> Command</h2>
<div class="para">
    The <code class="command">apt-cache</code> command can display
    much of the information.</div>
<pre class="screen"><code>$ apt-cache search foo
result   one</code></pre>
<div class="para">Outer <div class="note">nested</div> tail &amp; end</div>
<ul><li>an item</li></ul></div></body></html>"""


def test_handbook_page_gives_paragraphs_titles_and_listings_not_navigation():
    p = corpora._HandbookText()
    p.feed(PAGE)
    assert p.docs == ["6.3. The apt-cache Command",
                      "The apt-cache command can display much of the information.",
                      "$ apt-cache search foo\nresult   one",
                      "Outer nested tail & end",
                      "an item"]


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, body in members.items():
        head = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += head + body + (b"\n" if len(body) % 2 else b"")
    return out


def test_deb_data_archive_is_found_after_an_odd_sized_member(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("usr/share/doc/x.txt")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    deb = tmp_path / "x.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": b"odd", "data.tar.gz": buf.getvalue()}))
    with corpora._deb_data(deb) as tar:
        assert tar.extractfile("usr/share/doc/x.txt").read() == b"hello"
    (tmp_path / "bad.deb").write_bytes(b"PK..")
    with pytest.raises(LowbitError, match="not a Debian package"):
        corpora._deb_data(tmp_path / "bad.deb")


def test_data_tables_are_not_code():
    assert corpora._is_code("static int f(int x) {\n  return x + 1;\n}\n")
    assert not corpora._is_code("static const uint8_t kTable[] = {\n" + "12, 250, 37, 4, 99, " * 200 + "};")


def test_paragraphs_split_on_blank_lines_with_crlf():
    assert corpora._paragraphs("one\r\nline\r\n\r\n  \r\ntwo\n\n\nthree") == ["one\nline", "two", "three"]


@pytest.mark.parametrize("name", ["wiki", "gutenberg", "handbook"])
def test_calibration_and_evaluation_share_no_document(name):
    docs = corpora.documents(name)
    assert len(docs) > 1000
    ev, cal = docs[::corpora.EVAL_EVERY], [d for i, d in enumerate(docs) if i % corpora.EVAL_EVERY]
    assert corpora.split(name, "eval") == "\n\n".join(ev) and corpora.split(name, "calib") == "\n\n".join(cal)
    assert len(ev) + len(cal) == len(docs)
    long_eval = {d for d in ev if len(d) > 200}  # short lines (titles) may repeat in a book
    assert long_eval and not long_eval & set(cal)


@pytest.mark.parametrize("name", corpora.OUT_OF_DOMAIN)
def test_out_of_domain_texts_are_all_evaluation_and_not_in_the_default_mix(name):
    assert name not in corpora.CALIBRATION_MIX
    docs = corpora.documents(name)
    assert corpora.split(name, "eval") == "\n\n".join(docs) and len(corpora.split(name, "eval")) > 150_000


def test_the_named_texts_are_what_they_say():
    assert "Alice" in corpora.split("gutenberg", "calib") and "ROSALIND" in corpora.split("gutenberg", "calib")
    assert "apt-get" in corpora.split("handbook", "calib")
    code = corpora.split("code", "eval")
    assert "#include" in code and "BrotliEncoderCompress" in code
    assert "GNU GENERAL PUBLIC LICENSE" in corpora.split("legal", "eval")


def test_default_calibration_is_the_three_domains_in_equal_parts(default_tokenizer):
    texts, source = load_texts(None, "calib")
    assert source == "default mix (wiki+gutenberg+handbook, calib splits)" and len(texts) == 3
    ids = calibration_samples(default_tokenizer, texts, 7, 32, seed=3)
    assert ids.shape == (7, 32)
    streams = [tokenize(default_tokenizer, t) for t in texts]

    def found_in(window, stream):
        hits = (stream.unfold(0, 32, 1) == window).all(1)
        return bool(hits.any())

    for i, window in enumerate(ids):
        assert found_in(window, streams[i % 3]), i  # window i comes from text i mod 3
    again = calibration_samples(default_tokenizer, texts, 7, 32, seed=3)
    assert torch.equal(ids, again)


def test_one_text_draws_the_same_windows_as_before(default_tokenizer):
    """A user's single file calibrates exactly as it did before mixes existed (same seed, same ids)."""
    text = corpora.split("wiki", "calib")[:200_000]
    ids = tokenize(default_tokenizer, text)
    g = torch.Generator().manual_seed(5)
    starts = torch.randint(0, len(ids) - 64, (6,), generator=g)
    want = torch.stack([ids[s:s + 64] for s in starts.tolist()])
    assert torch.equal(calibration_samples(default_tokenizer, text, 6, 64, seed=5), want)


def test_named_texts_and_files(tmp_path):
    texts, source = load_texts("code+legal", "eval")
    assert source == "code+legal" and len(texts) == 2
    f = tmp_path / "code"  # a file of that name wins over the corpus
    f.write_text("my own text")
    assert load_texts(f, "eval") == (["my own text"], str(f))
    with pytest.raises(LowbitError, match="does not exist"):
        load_texts(tmp_path / "nope.txt", "calib")
    with pytest.raises(LowbitError, match="unknown text 'wikii': name one of wiki, gutenberg"):
        load_texts("wiki+wikii", "calib")


def test_a_source_that_cannot_be_fetched_is_one_line_and_the_default_mix_goes_on_without_it(tmp_path, monkeypatch,
                                                                                            caplog):
    from lowbit.calibration.text import default_calibration

    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))  # nothing fetched yet
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # and no apt-get, no pip on the way
    monkeypatch.setattr(corpora, "BROTLI", "brotli==0.0.0.does-not-exist")
    with pytest.raises(LowbitError, match=r"cannot fetch the handbook text \(apt-get download debian-handbook"
                                          r"=11.20220922, Debian's apt\): .*; pass your own file with --calib"):
        corpora.documents("handbook")
    texts, names = default_calibration()
    assert names == ["wiki"] and len(texts) == 1
    assert "calibrating without handbook" in caplog.text and "calibrating without gutenberg" in caplog.text
    assert not list(tmp_path.rglob("*.deb")) and not list(tmp_path.rglob("*.json"))  # nothing half-written
