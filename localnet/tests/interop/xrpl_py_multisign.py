"""Multi-signing on a running berth-localnet, driven by xrpl-py.

Usage: xrpl_py_multisign.py <ws-url> <http-url>
A 3-of-5 signer list (weights 1); a multi-signed payment that succeeds; each way to
get one wrong, with the result code rippled gives; the master key disabled; and the
costs (reserve of a list, fee of a multi-signed transaction). Prints one JSON object;
exits non-zero (with the reason on stderr) on the first disagreement.
"""
import hashlib
import json
import sys
import time

from xrpl.clients import JsonRpcClient
from xrpl.constants import CryptoAlgorithm
from xrpl.core.addresscodec import decode_classic_address
from xrpl.core.binarycodec import encode
from xrpl.models.requests import (
    AccountInfo,
    AccountObjects,
    AccountObjectType,
    GenericRequest,
    ServerState,
    SubmitMultisigned,
    SubmitOnly,
    Tx,
)
from xrpl.models.transactions import AccountSet, AccountSetAsfFlag, Payment, SignerEntry, SignerListSet
from xrpl.transaction import autofill, autofill_and_sign, multisign, sign, submit, submit_and_wait
from xrpl.wallet import Wallet

from interop_common import GENESIS_SEED, check, fail, local_hash, out

LSF_DISABLE_MASTER = 0x00100000


def signer_list_index(address):
    data = (0x0053).to_bytes(2, "big") + decode_classic_address(address) + (0).to_bytes(4, "big")
    return hashlib.sha512(data).digest()[:32].hex().upper()


def info(client, address, **kw):
    return client.request(AccountInfo(account=address, ledger_index="current", **kw)).result


def balance(client, address):
    return int(info(client, address)["account_data"]["Balance"])


def owner_count(client, address):
    return info(client, address)["account_data"]["OwnerCount"]


def fund(client, genesis, wallet, xrp):
    tx = autofill_and_sign(Payment(account=genesis.address, destination=wallet.address, amount=str(xrp * 1_000_000)), client, genesis)
    r = submit_and_wait(tx, client).result
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", f"funded {wallet.address}")


def multisigned(client, tx, wallets, signers_count=None):
    """`tx` autofilled for `signers_count` signatures (default: as many as wallets) and
    signed by each wallet, combined by xrpl-py (which sorts the Signers)."""
    filled = autofill(tx, client, signers_count=len(wallets) if signers_count is None else signers_count)
    return multisign(filled, [sign(filled, w, multisign=True) for w in wallets])


def engine_result(client, tx):
    return submit(tx, client).result["engine_result"]


def raw_submit(client, tx_dict):
    """Submits a hand-built blob; returns the answer (error or result)."""
    r = client.request(SubmitOnly(tx_blob=encode(tx_dict)))
    return r.result


def wait_validated(client, tx_hash):
    for _ in range(100):
        r = client.request(Tx(transaction=tx_hash)).result
        if r.get("validated"):
            return r
        time.sleep(0.1)
    fail(f"{tx_hash} not validated")


def set_signer_list(client, owner, wallets, quorum):
    entries = [SignerEntry(account=w.address, signer_weight=1) for w in wallets]
    tx = autofill_and_sign(SignerListSet(account=owner.address, signer_quorum=quorum, signer_entries=entries), client, owner)
    return submit_and_wait(tx, client).result


def main():
    _, http_url = sys.argv[1], sys.argv[2]
    client = JsonRpcClient(http_url)
    genesis = Wallet.from_seed(GENESIS_SEED, algorithm=CryptoAlgorithm.SECP256K1)
    owner = Wallet.create()
    signers = [Wallet.create(algorithm=CryptoAlgorithm.SECP256K1 if i % 2 else CryptoAlgorithm.ED25519) for i in range(5)]
    signers.sort(key=lambda w: decode_classic_address(w.address))
    stranger = Wallet.create()
    dest = Wallet.create()
    fund(client, genesis, owner, 100)
    # Two signers exist (they sign with their master keys); three are phantoms.
    fund(client, genesis, signers[0], 20)
    fund(client, genesis, signers[3], 20)
    fund(client, genesis, dest, 20)
    reserve_inc = int(client.request(ServerState()).result["state"]["validated_ledger"]["reserve_inc"])
    out["reserve_inc"] = reserve_inc

    # The signer list: 3 of 5, weights 1.
    before = owner_count(client, owner.address)
    r = set_signer_list(client, owner, signers, 3)
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "SignerListSet 3-of-5: tesSUCCESS")
    added = owner_count(client, owner.address) - before
    check(added == 1, f"a signer list costs one owner count (got {added})")
    out["reserve_signer_list_5"] = added * reserve_inc
    created = [n["CreatedNode"] for n in r["meta"]["AffectedNodes"] if "CreatedNode" in n]
    check([c["LedgerEntryType"] for c in created] == ["SignerList"], "the metadata creates a SignerList")
    check(created[0]["LedgerIndex"] == signer_list_index(owner.address), "its index is keylet::signers")

    objs = client.request(AccountObjects(account=owner.address, type=AccountObjectType.SIGNER_LIST)).result["account_objects"]
    check(len(objs) == 1 and objs[0]["LedgerEntryType"] == "SignerList", "account_objects (signer_list) shows the SignerList")
    check(objs[0]["SignerQuorum"] == 3 and len(objs[0]["SignerEntries"]) == 5, "quorum 3, five entries")
    check([e["SignerEntry"]["Account"] for e in objs[0]["SignerEntries"]] == [w.address for w in signers], "entries sorted by AccountID")
    check(objs[0]["index"] == signer_list_index(owner.address), "account_objects gives its index")
    v2 = info(client, owner.address, signer_lists=True)
    check(v2["signer_lists"][0]["SignerQuorum"] == 3, "account_info signer_lists (API v2: in the result)")
    v1 = client.request(GenericRequest(method="account_info", account=owner.address, signer_lists=True, api_version=1)).result
    check(v1["account_data"]["signer_lists"][0]["SignerQuorum"] == 3, "account_info signer_lists (API v1: in account_data)")

    # A valid multi-signed payment with 3 signers (two phantoms, one existing).
    pay = Payment(account=owner.address, destination=dest.address, amount="20000000")
    by3 = [signers[0], signers[1], signers[2]]
    ms = multisigned(client, pay, by3)
    out["fee_3_signers"] = int(ms.fee)
    check(ms.fee == "40", f"autofill with signers_count=3 asks 10 x (1 + 3) drops (got {ms.fee})")
    want = local_hash(ms)
    owner_before, dest_before = balance(client, owner.address), balance(client, dest.address)
    r = submit_and_wait(ms, client).result
    check(r["meta"]["TransactionResult"] == "tesSUCCESS" and r["validated"], "multi-signed payment: tesSUCCESS, validated")
    check(r["hash"] == want, f"server hash {r['hash']} == xrpl-py hash {want}")
    check(r["tx_json"]["SigningPubKey"] == "" and len(r["tx_json"]["Signers"]) == 3, "stored with empty SigningPubKey and 3 Signers")
    check(balance(client, dest.address) - dest_before == 20_000_000, "destination got 20 XRP")
    check(owner_before - balance(client, owner.address) == 20_000_040, "owner paid 20 XRP and 40 drops")
    out["multisigned_payment"] = want

    # Five signers: fee 10 x 6.
    ms5 = multisigned(client, pay, signers)
    out["fee_5_signers"] = int(ms5.fee)
    r = submit_and_wait(ms5, client).result
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "5-signer payment: tesSUCCESS")

    # Rejections, with rippled's codes.
    out["too_few"] = engine_result(client, multisigned(client, pay, signers[:2]))
    check(out["too_few"] == "tefBAD_QUORUM", "two of quorum 3: tefBAD_QUORUM")
    out["not_listed"] = engine_result(client, multisigned(client, pay, [signers[0], signers[1], stranger]))
    check(out["not_listed"] == "tefBAD_SIGNATURE", "a signer not on the list: tefBAD_SIGNATURE")
    out["low_fee"] = engine_result(client, multisigned(client, pay, by3, signers_count=2))
    check(out["low_fee"] == "telINSUF_FEE_P", "3 signatures paying for 2: telINSUF_FEE_P")

    # Duplicate and unsorted Signers, built by hand (xrpl-py sorts them).
    good = multisigned(client, pay, by3).to_xrpl()
    dup = dict(good, Signers=[good["Signers"][0], good["Signers"][0], good["Signers"][1]])
    r = raw_submit(client, dup)
    out["duplicate"] = r.get("error_exception")
    check(r.get("error") == "invalidTransaction" and r.get("error_exception") == "fails local checks: Duplicate Signers not allowed.", f"duplicate signer: {r}")
    unsorted = dict(good, Signers=list(reversed(good["Signers"])))
    r = raw_submit(client, unsorted)
    out["unsorted"] = r.get("error_exception")
    check(r.get("error") == "invalidTransaction" and r.get("error_exception") == "fails local checks: Unsorted Signers array.", f"unsorted signers: {r}")
    # submit_multisigned sorts them itself but refuses a duplicate.
    r = client.request(GenericRequest(method="submit_multisigned", tx_json=dup)).result
    check(r.get("error") == "invalidParams" and "Duplicate Signers:Signer:Account entries" in r.get("error_message", ""), f"submit_multisigned refuses a duplicate: {r}")
    r = client.request(GenericRequest(method="submit_multisigned", tx_json=unsorted)).result
    check(r.get("engine_result") == "tesSUCCESS", f"submit_multisigned sorts the Signers: {r}")
    wait_validated(client, r["tx_json"]["hash"])

    # The master key disabled: multi-signing still works, single-signing does not.
    r = submit_and_wait(autofill_and_sign(AccountSet(account=owner.address, set_flag=AccountSetAsfFlag.ASF_DISABLE_MASTER), client, owner), client).result
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "asfDisableMaster with a signer list: tesSUCCESS")
    flags = info(client, owner.address)["account_data"]["Flags"]
    check(flags & LSF_DISABLE_MASTER, "lsfDisableMaster in account_info Flags")
    out["master_disabled"] = engine_result(client, autofill_and_sign(pay, client, owner))
    check(out["master_disabled"] == "tefMASTER_DISABLED", "single-signed by the disabled master key: tefMASTER_DISABLED")
    r = client.request(SubmitMultisigned(tx_json=multisigned(client, pay, by3))).result
    check(r["engine_result"] == "tesSUCCESS", "submit_multisigned after the master key is disabled: tesSUCCESS")
    wait_validated(client, r["tx_json"]["hash"])

    # An account without a list or regular key may not disable its master key.
    lone = Wallet.create()
    fund(client, genesis, lone, 20)
    r = submit(autofill_and_sign(AccountSet(account=lone.address, set_flag=AccountSetAsfFlag.ASF_DISABLE_MASTER), client, lone), client).result
    check(r["engine_result"] == "tecNO_ALTERNATIVE_KEY", "asfDisableMaster with no other key: tecNO_ALTERNATIVE_KEY")

    # The reserve of a 3-signer list (the same one owner count as 5, since MultiSignReserve).
    three = Wallet.create()
    fund(client, genesis, three, 20)
    before = owner_count(client, three.address)
    r = set_signer_list(client, three, signers[:3], 2)
    check(r["meta"]["TransactionResult"] == "tesSUCCESS", "SignerListSet 2-of-3: tesSUCCESS")
    out["reserve_signer_list_3"] = (owner_count(client, three.address) - before) * reserve_inc
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
