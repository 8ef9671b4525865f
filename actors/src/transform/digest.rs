//! Digests and signatures scripts may ask for (`sha256`, `md5`, HMACs, RS256), computed in
//! Rust with the RustCrypto crates and `ring`: destination APIs want hashed PII (Meta,
//! TikTok, Snapchat, Google Ads), subscriber hashes (Mailchimp) and signed JWTs (Google
//! service accounts), and V8 alone has no crypto.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest;

/// The digest of `data` under `algorithm` (`identity`, `sha256`, `sha512`, `sha1`, `md5`, `hmac-sha256`,
/// `hmac-sha1`; HMACs need `key`).
pub fn digest(algorithm: &str, data: &[u8], key: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let need_key = || key.ok_or_else(|| format!("{algorithm} needs a key"));
    Ok(match algorithm.to_ascii_lowercase().as_str() {
        // The bytes themselves: base64 of a text.
        "identity" => data.to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        "sha1" => sha1::Sha1::digest(data).to_vec(),
        "md5" => md5::Md5::digest(data).to_vec(),
        "hmac-sha256" => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(need_key()?)
                .map_err(|e| format!("{algorithm}: {e}"))?;
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        "hmac-sha1" => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(need_key()?)
                .map_err(|e| format!("{algorithm}: {e}"))?;
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        // RSASSA-PKCS1-v1_5 with SHA-256 (JWT "RS256"), keyed with a PKCS#8 PEM private key.
        "rsa-sha256" => rs256(need_key()?, data)?,
        other => {
            return Err(format!(
                "unknown digest {other:?} (identity, sha256, sha512, sha1, md5, hmac-sha256, hmac-sha1, rsa-sha256)"
            ))
        }
    })
}

fn rs256(pem: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| format!("rsa-sha256: the key is not a PKCS#8 PEM private key: {e}"))?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("rsa-sha256: unusable RSA key: {e}"))?;
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        data,
        &mut signature,
    )
    .map_err(|e| format!("rsa-sha256: signing failed: {e}"))?;
    Ok(signature)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// URL-safe base64 without padding (JWT segments).
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_published_test_vectors() {
        assert_eq!(
            hex(&digest("sha256", b"abc", None).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&digest("md5", b"", None).unwrap()),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            hex(&digest("sha1", b"abc", None).unwrap()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&digest(
                "hmac-sha256",
                b"what do ya want for nothing?",
                Some(b"Jefe")
            )
            .unwrap()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(digest("hmac-sha256", b"x", None).is_err());
        assert!(digest("rsa-sha256", b"x", Some(b"not a key")).is_err());
        assert!(digest("crc32", b"x", None).is_err());
    }

    #[test]
    fn rs256_signatures_verify_with_the_public_key() {
        // A throwaway key made for this test (openssl genpkey -algorithm RSA).
        let pem = include_bytes!("testdata/test_rsa_key.pem");
        let sig = digest("rsa-sha256", b"header.claims", Some(pem)).expect("signed");
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem).expect("pem");
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("key");
        use ring::signature::KeyPair;
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public_key().as_ref(),
        );
        public.verify(b"header.claims", &sig).expect("verifies");
        assert!(public.verify(b"header.other", &sig).is_err());
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
