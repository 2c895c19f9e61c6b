"""Train a Nano model: task sft. usage: python -m nano_train.sft [CONFIG.json] [--key=value ...]

A thin wrapper over nano_train.train (see its docstring, or --help, for every option).
"""

import sys

if __name__ == "__main__":
    try:  # importing torch takes seconds: a Ctrl-C during it is one line too, as later in main
        from nano_train.train import main
    except KeyboardInterrupt:
        print("\nerror: interrupted while starting; nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.exit(main("sft"))
