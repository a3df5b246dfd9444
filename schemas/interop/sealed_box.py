#!/usr/bin/env python3
"""An independent implementation of Berth's sealed box (schemas/README.md, "Sealed box"),
written from the README with Python's `cryptography` package only.

  sealed_box.py seal <recipient-seed-hex> <ephemeral-secret-hex> <nonce-hex> <plaintext-hex>
      prints the envelope (hex)
  sealed_box.py open <recipient-seed-hex> <envelope-hex>
      prints the plaintext (hex), or exits 1 with the reason
"""
import hashlib
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = serialization.Encoding.Raw
RAW_PUBLIC = serialization.PublicFormat.Raw
SALT = b"berth/sealed-box/v1"
INFO = b"berth/sealed-box/v1/aes-256-gcm"


def x25519_secret(seed):
    scalar = bytearray(hashlib.sha512(seed).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return X25519PrivateKey.from_private_bytes(bytes(scalar))


def public(private):
    return private.public_key().public_bytes(RAW, RAW_PUBLIC)


def key(shared, ephemeral, recipient):
    return HKDF(hashes.SHA256(), 32, SALT, INFO + ephemeral + recipient).derive(shared)


def seal(seed, ephemeral_secret, nonce, plaintext):
    # The recipient's X25519 public key from its secret equals the Edwards -> Montgomery map
    # of its ed25519 public key (checked by the Rust tests against libsodium's vector).
    recipient = public(x25519_secret(seed))
    ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_secret)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    cipher = AESGCM(key(shared, public(ephemeral), recipient))
    return bytes([1]) + public(ephemeral) + nonce + cipher.encrypt(nonce, plaintext, None)


def open_box(seed, envelope):
    if len(envelope) < 61:
        raise ValueError("truncated")
    if envelope[0] != 1:
        raise ValueError("version")
    ephemeral, nonce, ciphertext = envelope[1:33], envelope[33:45], envelope[45:]
    secret = x25519_secret(seed)
    shared = secret.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    return AESGCM(key(shared, ephemeral, public(secret))).decrypt(nonce, ciphertext, None)


def main(args):
    if args[:1] == ["seal"] and len(args) == 5:
        print(seal(*(bytes.fromhex(a) for a in args[1:])).hex())
        return 0
    if args[:1] == ["open"] and len(args) == 3:
        try:
            print(open_box(bytes.fromhex(args[1]), bytes.fromhex(args[2])).hex())
            return 0
        except (ValueError, InvalidTag) as error:
            print(f"open failed: {type(error).__name__} {error}", file=sys.stderr)
            return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
