//! Ledger object IDs (keylets) and NFToken IDs.

use crate::hash::sha512_half;

fn keylet(space: u16, parts: &[&[u8]]) -> [u8; 32] {
    let sp = space.to_be_bytes();
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&sp);
    all.extend_from_slice(parts);
    sha512_half(&all)
}

/// The AccountRoot of an account.
pub fn account_root(account: &[u8; 20]) -> [u8; 32] {
    keylet(u16::from(b'a'), &[account])
}

/// The first page of an account's owner directory.
pub fn owner_dir(account: &[u8; 20]) -> [u8; 32] {
    keylet(u16::from(b'O'), &[account])
}

/// The SignerList of an account (rippled keeps one, with SignerListID 0).
pub fn signer_list(account: &[u8; 20]) -> [u8; 32] {
    keylet(u16::from(b'S'), &[account, &0u32.to_be_bytes()])
}

/// An NFTokenOffer created by `owner` with transaction sequence `sequence`.
pub fn nft_offer(owner: &[u8; 20], sequence: u32) -> [u8; 32] {
    keylet(0x0071, &[owner, &sequence.to_be_bytes()])
}

/// The directory of sell offers for a token.
pub fn nft_sells(token_id: &[u8; 32]) -> [u8; 32] {
    keylet(u16::from(b'i'), &[token_id])
}

/// The directory of buy offers for a token.
pub fn nft_buys(token_id: &[u8; 32]) -> [u8; 32] {
    keylet(u16::from(b'h'), &[token_id])
}

/// The ID of an NFTokenPage: the owner's account ID followed by the low 96 bits of
/// the page's highest token.
pub fn nft_page(owner: &[u8; 20], low96: &[u8; 12]) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..20].copy_from_slice(owner);
    id[20..].copy_from_slice(low96);
    id
}

/// The low 96 bits of a token ID (its position within its owner's pages).
pub fn nft_low96(token_id: &[u8; 32]) -> [u8; 12] {
    let mut l = [0u8; 12];
    l.copy_from_slice(&token_id[20..]);
    l
}

/// Taxon scrambling of XLS-20, so that tokens of one taxon spread over pages.
pub fn cipher_taxon(taxon: u32, token_seq: u32) -> u32 {
    taxon ^ (384_160_001u32.wrapping_mul(token_seq).wrapping_add(2_459))
}

/// An NFTokenID: flags ‖ transfer fee ‖ issuer ‖ ciphered taxon ‖ sequence.
pub fn nftoken_id(
    flags: u16,
    transfer_fee: u16,
    issuer: &[u8; 20],
    taxon: u32,
    token_seq: u32,
) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[0..2].copy_from_slice(&flags.to_be_bytes());
    id[2..4].copy_from_slice(&transfer_fee.to_be_bytes());
    id[4..24].copy_from_slice(issuer);
    id[24..28].copy_from_slice(&cipher_taxon(taxon, token_seq).to_be_bytes());
    id[28..32].copy_from_slice(&token_seq.to_be_bytes());
    id
}

/// The parts of an NFTokenID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftParts {
    pub flags: u16,
    pub transfer_fee: u16,
    pub issuer: [u8; 20],
    pub taxon: u32,
    pub sequence: u32,
}

/// Splits an NFTokenID into its parts (the taxon unciphered).
pub fn nftoken_parts(id: &[u8; 32]) -> NftParts {
    let mut issuer = [0u8; 20];
    issuer.copy_from_slice(&id[4..24]);
    let sequence = u32::from_be_bytes([id[28], id[29], id[30], id[31]]);
    let ciphered = u32::from_be_bytes([id[24], id[25], id[26], id[27]]);
    NftParts {
        flags: u16::from_be_bytes([id[0], id[1]]),
        transfer_fee: u16::from_be_bytes([id[2], id[3]]),
        issuer,
        taxon: cipher_taxon(ciphered, sequence),
        sequence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nftoken_id_parts_round_trip() {
        let issuer = [7u8; 20];
        let id = nftoken_id(0x0009, 500, &issuer, 42, 17);
        let p = nftoken_parts(&id);
        assert_eq!(
            (p.flags, p.transfer_fee, p.issuer, p.taxon, p.sequence),
            (9, 500, issuer, 42, 17)
        );
    }
}
