"""nano-format: inspect, validate and convert Nano `.bin` model files.

Usage:
    nano-format info FILE [--json]
    nano-format validate FILE...
    nano-format convert IN OUT [--quant f32|q8_0] [--group-size N]
                               [--layout 2026.1|2026.101]
                               [--attention causal|full] [--position rope|learned]
                               [--norm-eps X] [--rope-theta X]
    python -m nano_format ...   (the same)

info      header fields, layout and what it means, config, vocabulary summary,
          the tensor table (offsets, shapes, dtypes, sizes) and totals.
validate  checks each file completely (Q8_0 scales and F32 values too: NaN
          or infinity is an error); prints one OK line per file, or the reason
          on stderr, and always goes on to the next.
convert   rewrites a file in another layout and/or quantization. By default the
          layout and quantization stay as they are (2025.12 files become 2026.1).
          Q8_0 -> F32 dequantizes, F32 -> Q8_0 quantizes (the group size is
          the input's, or the largest that fits, up to 128). --attention,
          --norm-eps and --rope-theta record what only layout 2026.101 can say,
          e.g. a full-attention model such as sort6 needs --attention full.
          A new --rope-theta recomputes the RoPE tables; --position must match
          the tensors the file holds (RoPE tables or pos_embd). OUT is written
          atomically and keeps its mode; one that is not a regular file (a
          folder, a device, a FIFO, a symbolic link) is never replaced.

Exit status: 0 success; 1 a bad file or a failed conversion (the reason on
stderr, never a traceback); 2 a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import __version__, spec
from .atomic import check_writable
from .config import Config
from .errors import BadGroupSize, FormatError, shown
from .quant import check_group_size
from .reader import NanoFile, read
from .spec import Attention, ModelType, Position, QuantType, TokenizerKind
from .writer import write

_EXAMPLES = 8  # vocabulary examples shown by `info`
_SPECIALS_SHOWN = 16


# ---------------------------------------------------------------------------
# Describing a file (shared by the text and JSON outputs)


def _json_text(value) -> str:
    """JSON safe for a terminal. Readable text stays readable (no ensure_ascii:
    Chinese stays Chinese), but what shown() would escape and json.dumps
    leaves raw (DEL, C1 controls, bidi controls such as U+202E, U+2028/U+2029,
    other non-printable code points) is written as \\uXXXX. Such code points
    only occur inside strings, where the escape parses back to the same value."""
    out = []
    for ch in json.dumps(value, indent=2, ensure_ascii=False):
        n = ord(ch)
        if n < 0x7F or ch.isprintable():
            out.append(ch)
        elif n > 0xFFFF:  # beyond the BMP: JSON spells it as a UTF-16 surrogate pair
            n -= 0x10000
            out.append(f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}")
        else:
            out.append(f"\\u{n:04x}")
    return "".join(out)


def _token_text(tok) -> str:
    """A trie token's text; a BPE token's bytes escaped by shown()."""
    if hasattr(tok, "text"):
        return tok.text
    return shown(tok.data.decode("utf-8", errors="surrogateescape"), backslash=True)


def _vocab_summary(nf: NanoFile) -> dict | None:
    tokens = nf.tokens
    if tokens is None:
        return None
    summary = {
        "kind": nf.tokenizer_kind.name.lower(),
        "offset": nf.tokenizer_offset,
        "nbytes": nf.tokenizer_nbytes,
        "size": len(tokens),
    }
    if nf.tokenizer_kind == TokenizerKind.TRIE:
        specials = [t for t in tokens if t.is_special]
        longest = max(tokens, key=lambda t: len(t.text))
        summary["specials"] = [{"id": t.id, "text": t.text} for t in specials]
        summary["longest"] = {"id": longest.id, "text": longest.text, "code_points": len(longest.text)}
        ordinary = [t for t in tokens if not t.is_special]
    else:
        summary["max_token_length"] = nf.max_token_length
        index = max(range(len(tokens)), key=lambda i: len(tokens[i].data))
        summary["longest"] = {"id": index, "text": _token_text(tokens[index]), "bytes": len(tokens[index].data)}
        ordinary = [_Indexed(i, t) for i, t in enumerate(tokens)]
    step = max(1, len(ordinary) // _EXAMPLES)
    summary["examples"] = [{"id": t.id, "text": _token_text(t)} for t in ordinary[::step][:_EXAMPLES]]
    return summary


@dataclasses.dataclass(frozen=True)
class _Indexed:  # a BPE token with its id, for examples
    id: int
    token: object

    @property
    def data(self) -> bytes:
        return self.token.data


def describe(nf: NanoFile) -> dict:
    """Everything `info` shows, as JSON-friendly values."""
    layout = nf.layout
    tensors = nf.tensors
    params = sum(t.nbytes for t in tensors)
    values = 0
    for t in tensors:
        n = 1
        for d in t.shape:
            n *= d
        values += n if t.dtype != "q4k" else 0
    return {
        "path": nf.path,
        "file_size": nf.file_size,
        "layout": {"name": layout.name, "version": list(layout.version), "writer": layout.writer,
                   "extension": layout.extension, "note": layout.note},
        "model_type": nf.model_type.name.lower(),
        "quant": nf.quant.name.lower(),
        "quant_code": nf.quant_code,
        "group_size": nf.group_size,
        "loadable": nf.loadable,
        "header": nf.header,
        "config": nf.config.to_dict(),
        "config_implied": not layout.extension and nf.model_type != ModelType.LORA,
        "tokenizer": _vocab_summary(nf),
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "offset": t.offset,
                     "nbytes": t.nbytes} for t in tensors],
        "totals": {"header": spec.HEADER_SIZE, "tokenizer": nf.tokenizer_nbytes, "parameters": params,
                   "file": spec.HEADER_SIZE + nf.tokenizer_nbytes + params, "tensors": len(tensors),
                   "values": values},
    }


def _header_rows(nf: NanoFile) -> list[tuple[int, str, str]]:
    h = nf.header
    rows = [(spec.OFF_MAGIC0, "magic", h["magic"]),
            (spec.OFF_MAJOR, "version", f"{h['major']}.{h['minor']}"),
            (spec.OFF_MODEL_TYPE, "model type", f"{h['model_type']} ({nf.model_type.name.lower()})"),
            (spec.OFF_CONFIG_LEN, "config length", str(h["config_length"]))]
    fields = spec.LORA_CONFIG_FIELDS if nf.model_type == ModelType.LORA else spec.CONFIG_FIELDS
    rows += [(spec.config_offset(f), f, str(h[f])) for f in fields]
    rows += [(spec.OFF_QUANT, "quant type", f"0x{h['quant_type']:02X} ({nf.quant.name.lower()})"),
             (spec.OFF_GROUP_SIZE, "group size", str(h["group_size"]))]
    if nf.layout.extension:
        rows += [(spec.OFF_EXT_ATTENTION, "attention", f"{h['attention']} ({nf.config.attention.name.lower()})"),
                 (spec.OFF_EXT_POSITION, "position", f"{h['position']} ({nf.config.position.name.lower()})"),
                 (spec.OFF_EXT_NORM_EPS, "norm eps", f"{h['norm_eps']:g}"),
                 (spec.OFF_EXT_ROPE_THETA, "rope theta", f"{h['rope_theta']:g}"),
                 (spec.OFF_EXT_TOKENIZER, "tokenizer kind",
                  f"{h['tokenizer_kind']} ({nf.tokenizer_kind.name.lower()})")]
    return rows


def _info_text(nf: NanoFile) -> str:
    d = describe(nf)
    layout = nf.layout
    who = {"reference": "written by the reference exporter; read only here",
           "nano": "Nano's extended layout", "both": "written by the reference and by Nano"}[layout.writer]
    out = [f"file        {shown(nf.path or '<buffer>')} ({nf.file_size:,} bytes)",
           f"layout      {layout.name} ({who})",
           f"            {layout.note}",
           f"model       {d['model_type']}"]
    quant = f"{d['quant']} (stored code 0x{nf.quant_code:02X})"
    if nf.quant == QuantType.Q8_0:
        quant += f", group size {nf.group_size}"
    if not nf.loadable:
        quant += "; parameters cannot be loaded by nano-format"
    out += [f"quant       {quant}", "", "header"]
    out += [f"  0x{off:02X}  {name:<20} {value}" for off, name, value in _header_rows(nf)]
    out += ["", "config"]
    cfg = d["config"]
    out.append("  " + ", ".join(f"{k} {v}" for k, v in cfg.items()
                                if k not in ("model_type", "attention", "position", "norm_eps", "rope_theta")))
    if isinstance(nf.config, Config):
        c = nf.config
        implied = " (implied: this layout cannot record them)" if d["config_implied"] else ""
        out.append(f"  attention {c.attention.name.lower()}, position {c.position.name.lower()}, "
                   f"norm_eps {c.norm_eps:g}, rope_theta {c.rope_theta:g}{implied}")
    else:
        out.append(f"  head_dim {nf.config.head_dim}, scale alpha/rank = {nf.config.scale:g}")
    v = d["tokenizer"]
    out.append("")
    if v is None:
        out.append("vocabulary  none")
    else:
        end = v["offset"] + v["nbytes"]
        # BPE texts are already escaped by shown(): quote them without repr's doubling.
        show = repr if v["kind"] == "trie" else (lambda text: f"'{text}'")
        out.append(f"vocabulary  {v['kind']}, {v['size']:,} tokens, section 0x{v['offset']:X}..0x{end:X} "
                   f"({v['nbytes']:,} bytes)")
        if "specials" in v:
            listed = " ".join(f"{s['text']!r}={s['id']}" for s in v["specials"][:_SPECIALS_SHOWN])
            more = f" (+{len(v['specials']) - _SPECIALS_SHOWN} more)" if len(v["specials"]) > _SPECIALS_SHOWN else ""
            out.append(f"  specials  {len(v['specials'])}: {listed}{more}")
            out.append(f"  longest   {v['longest']['text']!r} (id {v['longest']['id']}, "
                       f"{v['longest']['code_points']} code points)")
        else:
            out.append(f"  max token length {v['max_token_length']} bytes")
            out.append(f"  longest   {show(v['longest']['text'])} (id {v['longest']['id']}, "
                       f"{v['longest']['bytes']} bytes)")
        out.append("  examples  " + "  ".join(f"{e['id']}={show(e['text'])}" for e in v["examples"]))
    out += ["", "tensors", f"  {'name':<12} {'dtype':<5} {'shape':<16} {'offset':>10} {'bytes':>12}"]
    for t in d["tensors"]:
        shape = " x ".join(str(n) for n in t["shape"])
        out.append(f"  {t['name']:<12} {t['dtype']:<5} {shape:<16} {'0x%X' % t['offset']:>10} {t['nbytes']:>12,}")
    tot = d["totals"]
    out += ["", "totals",
            f"  header {tot['header']:,} + tokenizer {tot['tokenizer']:,} + parameters {tot['parameters']:,} "
            f"= {tot['file']:,} bytes",
            f"  {tot['values']:,} values in {tot['tensors']} stored tensors"]
    return "\n".join(out)


def _one_line(nf: NanoFile) -> str:
    c = nf.config
    quant = nf.quant.name.lower() + (f" (group {nf.group_size})" if nf.quant == QuantType.Q8_0 else "")
    vocab = f", vocab {c.vocab_size}" if isinstance(c, Config) else f", rank {c.rank}"
    return (f"{nf.layout.name} {nf.model_type.name.lower()} {quant}, {c.n_layer} layers, "
            f"n_embd {c.n_embd}{vocab}, {nf.file_size:,} bytes")


# ---------------------------------------------------------------------------
# Commands


def cmd_info(args) -> int:
    with read(args.file) as nf:
        if args.json:
            print(_json_text(describe(nf)))
        else:
            print(_info_text(nf))
    return 0


def cmd_validate(args) -> int:
    failed = 0
    for path in args.files:  # one file's problem never stops the others
        try:
            with read(path) as nf:
                nf.ensure_loadable()
                nf.tokens  # decode the vocabulary too
                nf.check_scales()  # Q8_0: a NaN or overflowing scale is an error, like a bad header
                nf.check_finite()  # and so is a NaN or infinity in an F32 tensor
                line = f"OK   {shown(path)}: {_one_line(nf)}"
        except (FormatError, OSError, ValueError) as e:
            failed += 1
            print(f"FAIL {_error_text(e, path)}", file=sys.stderr)
        else:
            print(line)
    return 1 if failed else 0


def cmd_convert(args) -> int:
    with read(args.input) as src:
        check_writable(args.output)  # a missing folder or no permission: said before the work, not after
        src.ensure_loadable()
        src.check_scales()
        src.check_finite()  # the writer would refuse NaN or infinity too, without naming IN
        if src.model_type == ModelType.LORA:
            return _convert_lora(src, args)
        return _convert_model(src, args)


def _convert_lora(src: NanoFile, args) -> int:
    extra = [o for o in ("quant", "group_size", "attention", "position", "norm_eps", "rope_theta", "layout")
             if getattr(args, o) is not None]
    if extra:
        raise _UsageError("a LoRA module converts only to itself (layout 2024.10, F32): drop "
                          + ", ".join("--" + o.replace("_", "-") for o in extra))
    size = write(args.output, src.config, src.weights(), layout=spec.LAYOUT_2024_10)
    print(f"wrote {shown(args.output)}: 2024.10 lora f32, {size:,} bytes")
    return 0


def _convert_model(src: NanoFile, args) -> int:
    layout = args.layout or (src.layout.name if src.layout.writer != "reference" else spec.DEFAULT_LAYOUT.name)
    quant = {"q8_0": QuantType.Q8_0, "f32": QuantType.F32, None: src.quant}[args.quant]
    if quant == QuantType.F32 and args.group_size is not None:
        raise _UsageError(f"--group-size applies to q8_0 output only ({shown(args.input)} is f32: add --quant q8_0)"
                          if args.quant is None else "--group-size applies to q8_0 output only")
    if quant == QuantType.Q8_0 and args.group_size is not None:
        try:
            check_group_size(src.config, args.group_size)
        except BadGroupSize as e:  # the option's mistake, not the file's: no offset in it
            lengths = sorted({src.config.n_embd, src.config.q_dim, src.config.n_hidden})
            divisors = [g for g in range(1, max(lengths) + 1) if all(n % g == 0 for n in lengths)]
            raise _UsageError(f"--group-size {e.message}; it must divide {', '.join(map(str, lengths))}: "
                              f"one of {', '.join(map(str, divisors))}") from None
    changes = {}
    if args.attention is not None:
        changes["attention"] = Attention[args.attention.upper()]
    if args.position is not None and Position[args.position.upper()] != src.config.position:
        have = "RoPE tables" if src.config.position == Position.ROPE else "a learned position embedding"
        raise FormatError(f"the file holds {have}; {args.position} positions would need new weights "
                          f"(--position only records what the tensors already are)", path=src.path)
    if args.norm_eps is not None:
        changes["norm_eps"] = args.norm_eps
    if args.rope_theta is not None:
        changes["rope_theta"] = args.rope_theta
    config = dataclasses.replace(src.config, **changes)

    group = args.group_size
    if quant == src.quant and group in (None, src.group_size):
        tensors = src.weights()  # as stored: Q8_0 values pass through untouched
        group = src.group_size if quant == QuantType.Q8_0 else None
    else:
        tensors = {name: src.tensor(name) for name in src.tensor_names()}  # floats: (re)quantized on write
    recompute = config.position == Position.ROPE and config.rope_theta != src.config.rope_theta
    if recompute:
        for name in spec.ROPE_TENSORS:  # the writer computes them for the new theta
            tensors.pop(name, None)
    write(args.output, config, tensors, src.tokens, quant=quant, group_size=group, layout=layout)
    if recompute:
        print(f"note: rope_theta {src.config.rope_theta:g} -> {config.rope_theta:g}: RoPE tables recomputed",
              file=sys.stderr)
    with read(args.output) as out:
        print(f"wrote {shown(args.output)}: {_one_line(out)}")
    return 0


# ---------------------------------------------------------------------------


class _UsageError(Exception):
    """Options that do not fit the input file: reported like argparse's errors (exit 2)."""


def _file_name(text: str) -> str:
    """A file argument: an empty one is a mistake (an unset shell variable), never a file."""
    if not text:
        raise argparse.ArgumentTypeError("the file name is empty (an unset shell variable?)")
    return text


def _ascii_number(text: str, what: str) -> str:
    # int() and float() also take other scripts' digits ('١٦' is 16) and underscores ('1_6')
    if not text.isascii() or "_" in text:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(_ascii_number(text, "an integer"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(_ascii_number(text, "a number"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nano-format", description="Inspect, validate and convert Nano .bin model files.",
        epilog="Exit status: 0 success, 1 bad file or failed conversion, 2 usage error.")
    parser.add_argument("--version", action="version", version=f"nano-format {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="show header, config, vocabulary and tensor table",
                       description="Show a model file's header fields, layout, config, vocabulary "
                                   "summary and tensor table (offsets, shapes, dtypes, sizes).")
    p.add_argument("file", type=_file_name, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("validate", help="check files completely",
                       description="Check each file completely. Prints one OK line per good file; "
                                   "the reason for each bad one on stderr (exit status 1).")
    p.add_argument("files", nargs="+", type=_file_name, metavar="FILE")
    p.set_defaults(run=cmd_validate)

    layouts = [la.name for la in spec.LAYOUTS if la.writer != "reference" and la.model_types != (ModelType.LORA,)]
    p = sub.add_parser("convert", help="rewrite a file in another layout or quantization",
                       description="Rewrite IN as OUT. Unless given, the layout and quantization stay as "
                                   "they are (2025.12 files become 2026.1).")
    p.add_argument("input", type=_file_name, metavar="IN")
    p.add_argument("output", type=_file_name, metavar="OUT")
    p.add_argument("--quant", choices=["f32", "q8_0"], help="F32 (dequantizes) or Q8_0 (quantizes)")
    p.add_argument("--group-size", type=_positive_int, metavar="N",
                   help="Q8_0 group size (default: the input's, or the largest divisor of the row "
                        "lengths up to 128)")
    p.add_argument("--layout", choices=layouts,
                   help="2026.1 (reference-loadable) or 2026.101 (records attention, position, eps, theta)")
    p.add_argument("--attention", choices=["causal", "full"], help="record the attention kind (2026.101)")
    p.add_argument("--position", choices=["rope", "learned"],
                   help="the position encoding; must match the file's tensors")
    p.add_argument("--norm-eps", type=_positive_float, metavar="X", help="RMSNorm epsilon (2026.101)")
    p.add_argument("--rope-theta", type=_positive_float, metavar="X",
                   help="RoPE theta (2026.101); the RoPE tables are recomputed")
    p.set_defaults(run=cmd_convert, parser=p)  # (its usage errors show convert's usage)
    return parser


def _error_text(err: Exception, path=None) -> str:
    """One line, safe for a terminal (file names and token texts escaped)."""
    if isinstance(err, OSError):
        name = err.filename or path
        text = f"{name}: {err.strerror or err}" if name else str(err)
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if path is not None and not getattr(err, "path", None):
            text = f"{path}: {text}"
    return shown(text)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # a name the terminal cannot encode must not stop a command
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.run(args)
    except _UsageError as e:
        getattr(args, "parser", parser).error(str(e))  # exits with status 2
    except BrokenPipeError:  # `nano-format info x.bin | head`: stop quietly
        sys.stdout = None
        return 1
    except (FormatError, OSError, ValueError, KeyError) as e:
        print(f"nano-format: error: {_error_text(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
