"""Command lines and helpers given what a user types by mistake: an empty file name
(an unset shell variable), digits of other scripts, JSON with a byte order mark.
Each row is a case that once gave a misleading message or a silent wrong result."""

import os

import pytest

import nano_format as nf
from nano_format import cli


def run_here(capsys, *args):
    """cli.main in this process: (exit status, stdout, stderr). An exception escaping
    main() (what would be a traceback) fails the test."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "error: " in line and err.count("error: ") == 1, err
    return line


# (argv with {model} for a valid model file, exit status, fragment of the error line)
USAGE_CASES = [
    # empty names: once "[Errno 2] No such file or directory: ''", after the conversion's work for OUT
    (["info", ""], 2, "argument FILE: the file name is empty"),
    (["info", "--json", ""], 2, "argument FILE: the file name is empty"),
    (["validate", "{model}", ""], 2, "argument FILE: the file name is empty"),
    (["convert", "", "out.bin"], 2, "argument IN: the file name is empty"),
    (["convert", "{model}", ""], 2, "argument OUT: the file name is empty"),
    # int() and float() take other scripts' digits and underscores: these were accepted as 16, 1, 10000
    (["convert", "{model}", "out.bin", "--quant", "q8_0", "--group-size", "\u0661\u0666"], 2,
     "argument --group-size: not an integer"),
    (["convert", "{model}", "out.bin", "--quant", "q8_0", "--group-size", "1_6"], 2,
     "argument --group-size: not an integer"),
    (["convert", "{model}", "out.bin", "--layout", "2026.101", "--norm-eps", "\u0661"], 2,
     "argument --norm-eps: not a number"),
    (["convert", "{model}", "out.bin", "--layout", "2026.101", "--rope-theta", "1_0000"], 2,
     "argument --rope-theta: not a number"),
]


@pytest.mark.parametrize("argv, status, fragment", USAGE_CASES, ids=[" ".join(c[0]) for c in USAGE_CASES])
def test_mistyped_arguments_are_refused_plainly(capsys, tmp_path, monkeypatch, sort6_path, argv, status, fragment):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{model}", str(sort6_path)) for a in argv]
    rc, out, err = run_here(capsys, *argv)
    assert rc == status and out == ""
    assert fragment in one_error_line(err)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file left


def _check_writable_empty():
    nf.check_writable("")


def _write_atomically_empty():
    nf.write_atomically("", [b"data"])


def _kept_mode_empty():
    nf.kept_mode("")


def _read_empty():
    nf.read("")


def _json_with_bom():
    nf.parse_json('\ufeff{"vocab_size": 80}')


def _json_with_nul():
    nf.parse_json('["a\x00b"]')


# (call, exception type, message fragment, fragment that must not appear)
API_CASES = [
    # check_writable("") passed (a temporary file could be made in "."), and the write failed after the work
    (_check_writable_empty, nf.WriteError, "the file name is empty", None),
    (_write_atomically_empty, nf.WriteError, "the file name is empty", None),
    (_kept_mode_empty, nf.WriteError, "the file name is empty", None),  # was None: "nothing there"
    (_read_empty, FileNotFoundError, "the file name is empty", None),
    # json's words: "Unexpected UTF-8 BOM (decode using utf-8-sig)" and "Invalid control character at at line"
    (_json_with_bom, nf.JSONTextError, "byte order mark", "utf-8-sig"),
    (_json_with_nul, nf.JSONTextError, "Invalid control character at line 1 column 4", "at at"),
]


@pytest.mark.parametrize("call, error, fragment, absent", API_CASES, ids=[c[0].__name__ for c in API_CASES])
def test_helpers_name_the_problem(tmp_path, monkeypatch, call, error, fragment, absent):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)
    if absent:
        assert absent not in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_convert_says_the_output_cannot_be_written_before_the_work(capsys, monkeypatch, tmp_path, sort6_path, where):
    out = tmp_path / "no" / "such" / "o.bin" if where == "missing folder" else tmp_path
    work = []
    monkeypatch.setattr(nf.NanoFile, "check_scales", lambda self: work.append("check_scales"))
    monkeypatch.setattr(cli, "write", lambda *a, **k: work.append("write"))
    rc, _, err = run_here(capsys, "convert", sort6_path, out, "--quant", "q8_0")
    line = one_error_line(err)
    assert rc == 1 and str(out) in line and work == [], (line, work)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_group_size_that_does_not_fit_is_the_options_mistake(capsys, psycho_path, sort6_path, tmp_path):
    # (was: "group size at offset 0x40: 7 does not divide ...", exit 1, as if the file were damaged)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", str(psycho_path), str(tmp_path / "x.bin"), "--group-size", "7"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: nano-format convert ")
    line = one_error_line(err)
    assert line == ("nano-format convert: error: --group-size 7 does not divide n_embd = 32, a quantized row "
                    "length; it must divide 32, 96: one of 1, 2, 4, 8, 16, 32"), line
    # (was: the top-level usage, and no hint)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["convert", str(sort6_path), str(tmp_path / "x.bin"), "--group-size", "16"])
    line = one_error_line(capsys.readouterr().err)
    assert exit_.value.code == 2 and line == (f"nano-format convert: error: --group-size applies to q8_0 output only "
                                              f"({sort6_path} is f32: add --quant q8_0)"), line
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_told_to_be_saved_to_a_file(capsys, tmp_path):
    # (was: "not a regular file but a directory; a model file is memory-mapped, so save it to a file first")
    rc, _, err = run_here(capsys, "info", tmp_path)
    assert rc == 1 and one_error_line(err) == f"nano-format: error: {tmp_path}: a directory, not a model file"


def test_a_file_cut_short_before_its_parameters_says_it_may_be(sort6_path, tmp_path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(sort6_path.read_bytes()[:30_000])
    with pytest.raises(nf.SizeOverflow, match=r"more than the whole file \(30000 bytes\): a file cut short "
                                               r"\(a download or copy that did not finish\?\), or a damaged config"):
        nf.read(cut)
