"""Shared tokenizer test vectors: python -m nano_tokenizer.vectors

Writes tests/vectors/tokenizer.json (repository root): cases that every Nano
tokenizer implementation (Python, C, WASM, device) must reproduce exactly.
Each case names a vocabulary file of ../shared/data, a text, whether special
tokens may match, the ids and decode(ids).

Usage:
  python -m nano_tokenizer.vectors [--shared DIR] [-o OUT] [--check]

--shared defaults to $NANO_SHARED, else ../shared next to the repository.
-o defaults to tests/vectors/tokenizer.json in the repository; the file is
written atomically (nano_format.write_atomically: a temporary file beside it,
renamed over it once complete), and something other than a regular file there
(a folder, say) is refused before any work, as one error line, exit status 1.
--check compares instead of writing and exits 1 when the file is out of date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from .tokenizer import Tokenizer, TokenizerError, check_writable, write_atomically

SCHEMA = 1
GENERATOR = "python -m nano_tokenizer.vectors"
VECTORS_RELPATH = Path("tests") / "vectors" / "tokenizer.json"

V4096 = "tokenizer_4096.json"  # single characters + 12 specials; the psycho fixture's vocabulary
V16384 = "tokenizer_16384_v2.json"  # 7 specials and 5035 multi-character word pieces
V80 = "nano_80.json"  # the sort6 fixture's vocabulary

ENGLISH = (
    "The amateur radio operator adjusted the antenna before the contest began. "
    "Understanding electricity requires patience, mathematics and curiosity; "
    "beginners often ask why the frequency changes when the temperature rises."
)
MIXED = "我是BD4SUR训练的实验性大语言模型Nano，使用 Python 3.12 和 C99 编写，功率100W、频率14.270MHz。"
CHAT = "<|instruct_mark|>你是谁<|response_mark|>我是BD4SUR训练的实验性大语言模型Nano，是一只可爱的电子鹦鹉噢(●'v'●)<|eos|>"
EMOJI = "Hello 👋🏽 世界 🚀! 👨‍👩‍👧 🇨🇳 1️⃣ ❤️ 😀😀"
ODD = {
    "combining_marks": "e\u0301 n\u0303 a\u0308\u0304 é Å A\u030a",
    "cjk_ext_b": "\U00020000\U00020bb7野家 \U0002a6d6\U0002b734",
    "lone_cr": "line one\rline two\r\rend\r",
    "crlf_and_lf": "a\r\nb\nc\n\r",
    "nul": "a\x00b\x00\x00c",
    "controls": "tab\there\x0bvt\x0cff\x08bs\x1besc\x7fdel",
    "invisible": "\ufeffbom zero\u200bwidth join\u200der rtl\u202eltr\u202c",
    "edges_of_unicode": "\U0010ffff \ue000 \ufffd \uffff \U0001f600 \u00a0 \u3000",
    "fullwidth": "ＡＢＣ１２３！？　ｈｅｌｌｏ",
}
SPECIAL_TEXTS = {
    "specials_wrapped": "<|bos|>你好<|eos|>",
    "specials_partial": "<|eos|<|eos||>eos|><<|eos|>>",
    "specials_literal_unknown": "a<|unknown|>b<|padding|><|padding|>",
    "specials_all": "<|padding|><|unknown|><|bos|><|eos|><|instruct_mark|><|response_mark|><|BD4SUR|>",
    "specials_nano_meta": "<|nano_meta_0|>x<|nano_meta_4|>",
}


def find_repo_root(start: Path | None = None) -> Path | None:
    """The nearest folder above `start` (default: here, then the current
    directory) that holds hatch.toml and packages/."""
    starts = [start] if start else [Path(__file__).resolve().parent, Path.cwd()]
    for base in starts:
        for folder in [base, *base.parents]:
            if (folder / "hatch.toml").is_file() and (folder / "packages").is_dir():
                return folder
    return None


def default_shared() -> Path:
    if os.environ.get("NANO_SHARED"):
        return Path(os.environ["NANO_SHARED"])
    root = find_repo_root()
    if root is None:
        raise TokenizerError("cannot find the repository; pass --shared or set NANO_SHARED")
    return root.parent / "shared"


def _read_text(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _backtrack_word(tok: Tokenizer) -> str:
    """A token whose one-shorter prefix is not a token but whose two-shorter
    prefix is: text that forces a longest-match implementation to back up."""
    for token in tok.itos:
        if len(token) > 3 and token not in tok.special_tokens and token[:-1] not in tok.stoi and token[:-2] in tok.stoi:
            return token
    raise TokenizerError("no token suitable for the backtracking case")


def case_specs(shared: Path) -> list[tuple[str, str, str, bool]]:
    """(name, vocab file, text, allow_special) for every case, in file order."""
    data = shared / "data"
    psycho = _read_text(data / "pretrain_psycho.txt")
    radio = _read_text(data / "pretrain_amateur_radio.txt")
    self_id = _read_text(data / "sft_self_id.jsonl")
    word = _backtrack_word(Tokenizer.load(data / V16384))
    # Where the radio corpus spells out call signs in English: multi-character
    # matches inside a long, mostly Chinese input.
    call = radio.index("Bravo Hotel")

    specs = [
        ("empty", V4096, "", False),
        ("empty_allow_special", V16384, "", True),
        ("empty_sort", V80, "", False),
        ("chinese_short", V4096, psycho[:60], False),
        ("chinese_short_16384", V16384, psycho[:60], False),
        ("english_words_16384", V16384, ENGLISH, False),
        ("english_words_4096", V4096, ENGLISH, False),
        ("backtrack_16384", V16384, f"{word[:-1]} {word} {word[:-1]}", False),
        ("mixed_16384", V16384, MIXED, False),
        ("mixed_4096", V4096, MIXED, False),
        ("emoji_16384", V16384, EMOJI, False),
        ("emoji_4096", V4096, EMOJI, False),
        ("sort6_digits", V80, "251212", False),
        ("sort6_unknowns", V80, "Sort: 2,5,1 -> [1,2,5] 排序 <|eos|>", False),
        ("sft_self_id_jsonl", V4096, self_id[:400], False),
    ]
    for name, text in SPECIAL_TEXTS.items():
        for vocab in (V4096, V16384):
            for allow in (False, True):
                short = "4096" if vocab == V4096 else "16384"
                specs.append((f"{name}_{short}_{'allow' if allow else 'plain'}", vocab, text, allow))
    specs += [
        ("chat_template_4096", V4096, CHAT, True),
        ("chat_template_16384", V16384, CHAT, True),
        ("chat_template_as_user_text", V16384, CHAT, False),
        ("sort6_specials_allow", V80, "<|bos|>251212<|eos|><|padding|>", True),
    ]
    for name, text in ODD.items():
        specs.append((f"odd_{name}_16384", V16384, text, False))
        specs.append((f"odd_{name}_4096", V4096, text, False))
    specs += [
        ("long_psycho_4096", V4096, psycho[5000:6400], False),
        ("long_psycho_16384", V16384, psycho[5000:6400], False),
        ("long_radio_calls_16384", V16384, radio[call - 1000 : call + 1000], False),
        ("long_english_16384", V16384, " ".join([ENGLISH] * 16), False),
    ]
    return specs


def generate(shared: Path) -> dict:
    data = Path(shared) / "data"
    specs = case_specs(Path(shared))
    vocab_names = sorted({vocab for _, vocab, _, _ in specs})
    tokenizers = {name: Tokenizer.load(data / name) for name in vocab_names}
    vocabs = {
        name: {
            "vocab_size": tokenizers[name].vocab_size,
            "sha256": hashlib.sha256((data / name).read_bytes()).hexdigest(),
        }
        for name in vocab_names
    }
    cases = []
    for name, vocab, text, allow in specs:
        ids = tokenizers[vocab].encode(text, allow_special=allow)
        cases.append(
            {
                "name": name,
                "vocab": vocab,
                "text": text,
                "allow_special": allow,
                "ids": ids,
                "decoded": tokenizers[vocab].decode(ids),
            }
        )
    return {"schema": SCHEMA, "generator": GENERATOR, "vocabs": vocabs, "cases": cases}


def dumps(doc: dict) -> str:
    """Valid JSON, one case per line: diffs stay readable and the file small.
    UTF-8 rather than \\u escapes, so a minimal C reader needs no surrogate pairs."""

    def one(value) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    lines = ["{"]
    for key in ("schema", "generator", "vocabs"):
        lines.append(f"  {one(key)}: {one(doc[key])},")
    lines.append('  "cases": [')
    lines.append(",\n".join("    " + one(case) for case in doc["cases"]))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nano_tokenizer.vectors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, help="the shared folder (holding data/)")
    parser.add_argument("-o", "--out", type=Path, help="output file")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    try:
        shared = args.shared or default_shared()
        out = args.out
        if out is None:
            root = find_repo_root()
            if root is None:
                raise TokenizerError("cannot find the repository; pass -o")
            out = root / VECTORS_RELPATH
        if not args.check:  # refuse an unwritable -o before the work
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(e.errno, f"cannot make the folder: {e.strerror or e}", str(out.parent)) from None
            check_writable(out)
        text = dumps(generate(shared))
        if args.check:
            current = out.read_text(encoding="utf-8") if out.is_file() else None
            if current != text:
                print(f"{out} is out of date: run {GENERATOR}", file=sys.stderr)
                return 1
            print(f"{out} is up to date")
            return 0
        write_atomically(out, [text.encode("utf-8")])
    except TokenizerError as e:
        print(f"vectors: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        name = f"{e.filename}: " if e.filename else ""
        print(f"vectors: error: {name}{e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{len(json.loads(text)['cases'])} cases -> {out} ({len(text.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
