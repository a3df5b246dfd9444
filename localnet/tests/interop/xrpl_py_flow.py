"""Drives a running berth-localnet with xrpl-py, an independent XRPL client.

Usage: xrpl_py_flow.py <ws-url> <http-url>
Prints one JSON object: the hashes and IDs xrpl-py computed locally, the ones the
server answered with, and the checks made. Exits non-zero (with the reason on
stderr) on the first disagreement.
"""
import hashlib
import json
import sys

from xrpl.clients import JsonRpcClient, WebsocketClient
from xrpl.core.addresscodec import decode_classic_address
from xrpl.core.keypairs import derive_classic_address
from xrpl.models.requests import AccountInfo, AccountNFTs, NFTSellOffers, Subscribe, Tx
from xrpl.models.transactions import (
    AccountSet,
    Memo,
    NFTokenAcceptOffer,
    NFTokenBurn,
    NFTokenCreateOffer,
    NFTokenCreateOfferFlag,
    NFTokenMint,
    NFTokenMintFlag,
    Payment,
)
from xrpl.transaction import XRPLReliableSubmissionException, autofill_and_sign, submit, submit_and_wait
from xrpl.utils import get_balance_changes, get_nftoken_id, str_to_hex, xrp_to_drops
from xrpl.wallet import Wallet
from xrpl.constants import CryptoAlgorithm

from interop_common import GENESIS_SEED, check, fail, local_hash, out


def offer_index(address, sequence):
    acct = decode_classic_address(address)
    data = (0x0071).to_bytes(2, "big") + acct + sequence.to_bytes(4, "big")
    return hashlib.sha512(data).digest()[:32].hex().upper()


def send(client, tx, wallet, name):
    signed = autofill_and_sign(tx, client, wallet)
    want = local_hash(signed)
    res = submit_and_wait(signed, client, wallet)
    got = res.result["hash"]
    out[name] = {"hash": want, "result": res.result["meta"]["TransactionResult"]}
    check(got == want, f"{name}: server hash {got} == xrpl-py hash {want}")
    check(res.result["validated"] is True, f"{name}: validated")
    return signed, res.result


def main():
    ws_url, http_url = sys.argv[1], sys.argv[2]
    client = JsonRpcClient(http_url)
    genesis = Wallet.from_seed(GENESIS_SEED, algorithm=CryptoAlgorithm.SECP256K1)
    check(genesis.classic_address == "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh", "genesis address")
    alice = Wallet.create()  # ed25519
    bob = Wallet.create(algorithm=CryptoAlgorithm.SECP256K1)
    out["alice"], out["bob"] = alice.classic_address, bob.classic_address

    # Fund both from genesis.
    for name, w in (("fund_alice", alice), ("fund_bob", bob)):
        _, r = send(client, Payment(account=genesis.address, destination=w.address, amount=xrp_to_drops(1000)), genesis, name)
        check(r["meta"]["TransactionResult"] == "tesSUCCESS", f"{name}: tesSUCCESS")
        changes = {c["account"]: c["balances"][0]["value"] for c in get_balance_changes(r["meta"])}
        check(changes.get(w.address) == "1000", f"{name}: balance change seen by xrpl-py is +1000 XRP")

    # AccountSet: MessageKey and Domain.
    _, r = send(client, AccountSet(account=alice.address, message_key=bob.public_key, domain=str_to_hex("berth.example")), alice, "account_set")
    info = client.request(AccountInfo(account=alice.address, ledger_index="validated")).result
    check(info["account_data"]["MessageKey"] == bob.public_key.upper(), "MessageKey stored")

    # Mint, offer, accept, burn.
    _, r = send(client, NFTokenMint(account=alice.address, nftoken_taxon=3, flags=NFTokenMintFlag.TF_BURNABLE | NFTokenMintFlag.TF_TRANSFERABLE, uri=str_to_hex("berth:1:0")), alice, "mint")
    token = get_nftoken_id(r["meta"])
    out["nftoken_id"] = token
    check(token == r["meta"].get("nftoken_id"), f"xrpl-py's get_nftoken_id {token} == server's nftoken_id")
    nfts = client.request(AccountNFTs(account=alice.address)).result["account_nfts"]
    check([n["NFTokenID"] for n in nfts] == [token], "account_nfts lists the token")

    signed, r = send(client, NFTokenCreateOffer(account=alice.address, nftoken_id=token, amount=xrp_to_drops(5), flags=NFTokenCreateOfferFlag.TF_SELL_NFTOKEN), alice, "offer")
    want_offer = offer_index(alice.address, signed.sequence)
    out["offer_id"] = want_offer
    check(r["meta"].get("offer_id") == want_offer, "offer index as computed from its keylet")
    offers = client.request(NFTSellOffers(nft_id=token)).result["offers"]
    check(offers[0]["nft_offer_index"] == want_offer, "nft_sell_offers lists it")

    _, r = send(client, NFTokenAcceptOffer(account=bob.address, nftoken_sell_offer=want_offer, memos=[Memo(memo_type=str_to_hex("berth/acquire"), memo_data="00")]), bob, "accept")
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "accept: tesSUCCESS")
    nfts = client.request(AccountNFTs(account=bob.address)).result["account_nfts"]
    check([n["NFTokenID"] for n in nfts] == [token], "the buyer holds the token")

    _, r = send(client, NFTokenBurn(account=alice.address, nftoken_id=token, owner=bob.address), alice, "burn")
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "issuer burns a burnable token held by the buyer")

    # Failures: a tec through submit_and_wait, a tem through submit.
    nobody = Wallet.create()
    signed = autofill_and_sign(Payment(account=alice.address, destination=nobody.address, amount="1000"), client, alice)
    try:
        submit_and_wait(signed, client, alice)
        fail("a payment creating an account with 1000 drops succeeded")
    except XRPLReliableSubmissionException as e:
        check("tecNO_DST_INSUF_XRP" in str(e), f"xrpl-py reports the tec result: {e}")
    t = client.request(Tx(transaction=local_hash(signed))).result
    out["tec_payment"] = {"hash": local_hash(signed), "result": t["meta"]["TransactionResult"]}
    check(t["validated"] and t["meta"]["TransactionResult"] == "tecNO_DST_INSUF_XRP", "the tec is validated with its code (fee charged)")
    seq = client.request(AccountInfo(account=alice.address)).result["account_data"]["Sequence"]
    stale = autofill_and_sign(Payment(account=alice.address, destination=bob.address, amount="1000", sequence=seq - 1), client, alice)
    res = submit(stale, client)
    out["past_seq"] = res.result["engine_result"]
    check(res.result["engine_result"] == "tefPAST_SEQ", "a used sequence is tefPAST_SEQ")
    check(res.result["tx_json"]["hash"] == local_hash(stale), "a refused transaction still answers its hash")
    cheap = autofill_and_sign(Payment(account=alice.address, destination=bob.address, amount="1000", fee="9"), client, alice)
    res = submit(cheap, client)
    out["low_fee"] = res.result["engine_result"]
    check(res.result["engine_result"] == "telINSUF_FEE_P", "a fee under 10 drops is telINSUF_FEE_P")

    # A subscription over WebSocket sees a payment to alice.
    with WebsocketClient(ws_url) as ws:
        ws.send(Subscribe(accounts=[alice.address]))
        signed = autofill_and_sign(Payment(account=bob.address, destination=alice.address, amount="12345"), client, bob)
        submit(signed, client)
        want = local_hash(signed)
        seen = None
        for msg in ws:
            if msg.get("type") == "transaction":
                seen = msg
                break
        check(seen is not None and seen.get("transaction", seen.get("tx_json", {})).get("hash", seen.get("hash")) == want,
              "the subscription delivers the payment with its hash")
        check(seen["validated"] is True and seen["engine_result"] == "tesSUCCESS", "stream message is validated")
        out["streamed"] = want

    # The tx method finds everything xrpl-py computed.
    for name in ("fund_alice", "mint", "accept", "burn"):
        t = client.request(Tx(transaction=out[name]["hash"])).result
        check(t["validated"], f"tx finds {name}")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
