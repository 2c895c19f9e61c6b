"""Export a training checkpoint as a `.bin` model file (and its LoRA, if any).

usage: python -m nano_train.export --ckpt CKPT.pt --out MODEL.bin [--quant f32|q8_0]
                                   [--group-size N] [--layout 2026.1|2026.101]
                                   [--lora-out LORA.bin]
       (hatch run train:export ...)

  --ckpt PATH        a checkpoint written by nano-train (pretrain, sft or lora)
  --out PATH         the model file to write (the checkpoint's vocabulary goes in it)
  --quant Q          f32 (default) or q8_0
  --group-size N     Q8_0 values per scale; default: the largest divisor (<= 128)
                     of every row length, settled before the header is written
  --layout L         2026.1 (what the reference engine reads; the default) or
                     2026.101 (records attention kind, position kind, eps, theta);
                     chosen automatically for full-attention or learned-position models
  --lora-out PATH    for a LoRA checkpoint: write the base model to --out and the
                     adapters to PATH (layout 2024.10). Without it the adapters are
                     merged into the exported weights.

Example:
  python -m nano_train.export --ckpt out/ckpt.pt --out model_q80.bin --quant q8_0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nano_train.export",
        description="Export a nano-train checkpoint (.pt) as a .bin model file (and a LoRA .bin).",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint .pt written by nano-train")
    p.add_argument("--out", required=True, help="model .bin to write")
    p.add_argument("--quant", choices=("f32", "q8_0"), default="f32", help="weight format (default f32)")
    p.add_argument("--group-size", type=int, default=None, help="Q8_0 group size (default: automatic)")
    p.add_argument("--layout", choices=("2026.1", "2026.101"), default=None,
                   help="file layout (default 2026.1, or 2026.101 when the model needs it)")
    p.add_argument("--lora-out", help="for a LoRA checkpoint: write the adapters here, the base to --out")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .convert import export_bin, export_lora, load_checkpoint_model
        from .lora import detach_lora, has_lora, merge_lora

        ckpt = Path(args.ckpt)
        if not ckpt.is_file():
            raise ValueError(f"checkpoint not found: {ckpt}")
        if args.group_size is not None and args.quant != "q8_0":
            raise ValueError("--group-size applies to --quant q8_0 only")
        model, tokenizer = load_checkpoint_model(ckpt)
        if args.lora_out and not has_lora(model):
            raise ValueError(f"--lora-out: {ckpt} has no LoRA adapters")
        if args.lora_out:
            print(export_lora(model, args.lora_out))
            detach_lora(model)  # the base weights, untouched by the adapters
        elif has_lora(model):
            merge_lora(model)
            print("the checkpoint's LoRA adapters are merged into the exported weights "
                  "(use --lora-out to keep them separate)")
        info = export_bin(model, args.out, quant=args.quant, group_size=args.group_size,
                          layout=args.layout, tokenizer=tokenizer)
        print(info)
        if tokenizer is None:
            print("note: the checkpoint has no vocabulary, so the file has none either")
    except (ValueError, OSError) as e:  # bad input (ConvertError is a ValueError): no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
