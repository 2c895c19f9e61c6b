"""LoRA fine-tuning. usage: python -m nano_train.lora_train [CONFIG.json] --init_from=BASE.pt|BASE.bin [--key=value ...]

A thin wrapper over nano_train.train (see its docstring, or --help, for every option).
`python -m nano_train.lora` (the module of the adapters themselves) does the same.
"""

import sys

from nano_train import start

if __name__ == "__main__":
    sys.exit(start("lora"))
