//! Encryption of tokens at rest: AES-256-GCM (aws-lc-rs) under `session.keys`.
//!
//! A sealed blob is `version(1) | key id(4) | nonce(12) | ciphertext+tag`. The key id
//! is the first four bytes of SHA-256 of the key, so the blob names the key that
//! sealed it and keys can be added, reordered and retired: the first key seals, every
//! key opens. The associated data is the session's store key, which binds a blob to
//! its session: a blob copied into another session record does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

pub use crate::config::values::decode_key;

/// A fresh random 256-bit key, base64url: what `portcullis keygen` prints.
pub fn generate_key() -> String {
    URL_SAFE_NO_PAD.encode(crate::primitives::random_bytes::<32>())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("sealed data is malformed")]
    Malformed,
    #[error("sealed under a key that is no longer configured")]
    UnknownKey,
    #[error("sealed data failed authentication")]
    Forged,
}

/// The token cipher: seals with the first key, opens with any.
pub struct TokenCipher {
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCipher")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TokenCipher {
    pub fn new(keys: &[[u8; 32]]) -> Self {
        assert!(!keys.is_empty(), "at least one key");
        let keys = keys
            .iter()
            .map(|k| {
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&digest::digest(&digest::SHA256, k).as_ref()[..KEY_ID_LEN]);
                let key = UnboundKey::new(&AES_256_GCM, k).expect("32-byte key");
                (id, LessSafeKey::new(key))
            })
            .collect();
        Self {
            keys,
            rng: SystemRandom::new(),
        }
    }

    pub fn from_config(keys: &[crate::config::Secret]) -> Result<Self, String> {
        let keys = keys
            .iter()
            .map(|k| decode_key(k.expose()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(&keys))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the system random generator failed");
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .expect("AES-GCM seal of a bounded buffer");
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CipherError> {
        if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() || sealed[0] != VERSION {
            return Err(CipherError::Malformed);
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or(CipherError::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| CipherError::Malformed)?;
        let mut body = sealed[HEADER_LEN..].to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| CipherError::Forged)?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn round_trip_binds_to_associated_data() {
        let c = TokenCipher::new(&[key(1)]);
        let sealed = c.seal(b"access-token", b"session-a");
        assert_eq!(c.open(&sealed, b"session-a").unwrap(), b"access-token");
        assert_eq!(c.open(&sealed, b"session-b"), Err(CipherError::Forged));
        assert!(!sealed.windows(12).any(|w| w == b"access-token"));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let c = TokenCipher::new(&[key(1)]);
        assert_ne!(c.seal(b"x", b""), c.seal(b"x", b""));
    }

    #[test]
    fn rotation_old_key_still_opens_new_key_seals() {
        let old = TokenCipher::new(&[key(1)]);
        let sealed_old = old.seal(b"t", b"a");
        let rotated = TokenCipher::new(&[key(2), key(1)]);
        assert_eq!(rotated.open(&sealed_old, b"a").unwrap(), b"t");
        let sealed_new = rotated.seal(b"t", b"a");
        assert_eq!(old.open(&sealed_new, b"a"), Err(CipherError::UnknownKey));
        let retired = TokenCipher::new(&[key(2)]);
        assert_eq!(
            retired.open(&sealed_old, b"a"),
            Err(CipherError::UnknownKey)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let c = TokenCipher::new(&[key(7)]);
        let mut sealed = c.seal(b"refresh", b"k");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(c.open(&sealed, b"k"), Err(CipherError::Forged));
        assert_eq!(c.open(&sealed[..5], b"k"), Err(CipherError::Malformed));
        let mut wrong_version = c.seal(b"refresh", b"k");
        wrong_version[0] = 9;
        assert_eq!(c.open(&wrong_version, b"k"), Err(CipherError::Malformed));
    }

    #[test]
    fn keys_decode_strictly() {
        let k = generate_key();
        assert_eq!(k.len(), 43);
        assert!(decode_key(&k).is_ok());
        assert!(decode_key("short").is_err());
        assert!(decode_key("not base64 !!").is_err());
        assert!(decode_key(&URL_SAFE_NO_PAD.encode([0u8; 16])).is_err());
    }
}
