"""Train a Nano model: task pretrain. usage: python -m nano_train.pretrain [CONFIG.json] [--key=value ...]

A thin wrapper over nano_train.train (see its docstring, or --help, for every option).
"""

import sys

from nano_train import start

if __name__ == "__main__":
    sys.exit(start("pretrain"))
