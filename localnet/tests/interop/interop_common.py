"""What the xrpl-py interop scripts share: the genesis seed, the output object, checks
that stop at the first disagreement, and transaction IDs computed by xrpl-py alone."""
import hashlib
import json
import sys

from xrpl.core.binarycodec import encode

GENESIS_SEED = "snoPBrXtMeMyMHUVTgbuqAfg1SUTb"
out = {"checks": []}


def fail(msg):
    print(json.dumps(out, indent=1))
    print("MISMATCH: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    out["checks"].append(what)


def local_hash(signed):
    blob = bytes.fromhex(encode(signed.to_xrpl()))
    return hashlib.sha512(b"TXN\x00" + blob).digest()[:32].hex().upper()
