"""``python -m streamlearn.connectors KIND ...``: the same as ``streamlearn connect KIND ...``."""

import sys

from streamlearn.connectors.cli import KINDS, main

if len(sys.argv) < 2 or sys.argv[1] not in KINDS:
    print(f"usage: python -m streamlearn.connectors {{{','.join(KINDS)}}} ...", file=sys.stderr)
    sys.exit(2)
sys.exit(main(sys.argv[1], sys.argv[2:]))
