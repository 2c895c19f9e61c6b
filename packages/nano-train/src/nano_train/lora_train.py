"""LoRA fine-tuning. usage: python -m nano_train.lora_train [CONFIG.json] --init_from=BASE.pt|BASE.bin [--key=value ...]

A thin wrapper over nano_train.train (see its docstring, or --help, for every option).
It is not `nano_train.lora`: that module holds the adapters themselves.
"""

import sys

from nano_train import start

if __name__ == "__main__":
    sys.exit(start("lora"))
