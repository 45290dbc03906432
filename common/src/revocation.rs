//! Revoked stations: the collector's `revoked` entries, validated once into
//! station ids and certificate SHA-256 fingerprints, a live list that a
//! reload replaces, and the TLS client-certificate verifier that refuses a
//! revoked certificate during the handshake (with a `certificate_revoked`
//! alert the station can read).
//!
//! An entry is a fingerprint when, without its separators (`:`, `-`, spaces),
//! it is 64 hex digits in any case; otherwise it must be a valid station id.
//! Sixty-four hex digits with no separator are also a valid station id: such
//! an entry revokes both the certificate with that fingerprint and the station
//! of that name, because a revocation must never do less than it says.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki;
use crate::station::StationId;

/// Why a `revoked` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error(
        "revoked entry {entry:?} is neither a station id nor a SHA-256 certificate fingerprint (64 hex digits, any case, with or without `:` separators)"
    )]
    Entry { entry: String },
}

/// A certificate's SHA-256 fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// Reads 64 hex digits in any case, ignoring `:`, `-` and space
    /// separators; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(|b| !matches!(b, b':' | b'-' | b' '))
            .collect();
        if digits.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let hex = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    /// As `pki show` prints it: upper case, `:` between bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// What the `revoked` entries say, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    stations: BTreeSet<StationId>,
    fingerprints: BTreeSet<Fingerprint>,
}

impl Revoked {
    /// Validates every entry; the first one that is neither a station id nor
    /// a fingerprint is the error.
    pub fn parse<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Self, RevocationError> {
        let mut revoked = Self::default();
        for entry in entries {
            let entry = entry.as_ref();
            let fingerprint = Fingerprint::parse(entry);
            let station = StationId::new(entry.trim()).ok();
            if fingerprint.is_none() && station.is_none() {
                return Err(RevocationError::Entry {
                    entry: entry.to_owned(),
                });
            }
            revoked.fingerprints.extend(fingerprint);
            revoked.stations.extend(station);
        }
        Ok(revoked)
    }

    /// Whether a certificate (DER) of `station` is refused.
    pub fn refuses(&self, station: &StationId, fingerprint: &Fingerprint) -> bool {
        self.stations.contains(station) || self.fingerprints.contains(fingerprint)
    }

    /// How many stations and fingerprints are revoked.
    pub fn len(&self) -> usize {
        self.stations.len() + self.fingerprints.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.stations.is_empty() && self.fingerprints.is_empty()
    }

    /// The entries in `self` and not in `before`, in their normal forms
    /// (station ids, upper-case `:`-separated fingerprints).
    pub fn added_since(&self, before: &Revoked) -> Vec<String> {
        let stations = self
            .stations
            .difference(&before.stations)
            .map(|s| s.to_string());
        let prints = self
            .fingerprints
            .difference(&before.fingerprints)
            .map(|f| f.to_string());
        stations.chain(prints).collect()
    }
}

/// The revocations in force, shared by the TLS verifier and the gateway and
/// replaced as a whole by a reload; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    current: Arc<RwLock<Arc<Revoked>>>,
}

impl RevocationList {
    /// A list holding `revoked`.
    pub fn new(revoked: Revoked) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(revoked))),
        }
    }

    /// The revocations in force now.
    pub fn get(&self) -> Arc<Revoked> {
        // Only whole values are ever stored, so a poisoned lock still holds
        // a consistent one.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `revoked` in force for every handshake from now on.
    pub fn set(&self, revoked: Revoked) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(revoked);
    }

    /// Whether a certificate (DER) is refused: by its fingerprint, or by the
    /// station it names (a certificate naming no valid station is left to
    /// the caller's own check).
    pub fn refuses_certificate(&self, der: &[u8]) -> bool {
        let revoked = self.get();
        if revoked.is_empty() {
            return false;
        }
        let fingerprint = Fingerprint::of(der);
        match pki::station_id_from_der(der) {
            Ok(station) => revoked.refuses(&station, &fingerprint),
            Err(_) => revoked.fingerprints.contains(&fingerprint),
        }
    }
}

/// Wraps a client-certificate verifier: a certificate it accepts is still
/// refused, with `certificate_revoked`, when the list revokes it.
#[derive(Debug)]
pub struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationList,
}

impl RevokingVerifier {
    /// `inner` checked first, then `revoked`.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revoked: RevocationList) -> Self {
        Self { inner, revoked }
    }
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.refuses_certificate(end_entity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn print() -> Fingerprint {
        Fingerprint::parse(HEX).unwrap()
    }

    /// Issue 19: a fingerprint written in lower case or without colons
    /// revoked nothing, since entries were compared as exact strings.
    #[test]
    fn a_fingerprint_revokes_in_any_case_and_with_any_usual_separator() {
        let upper_colons = print().to_string();
        assert!(
            upper_colons.starts_with("01:23:45:67:89:AB"),
            "{upper_colons}"
        );
        let forms = [
            upper_colons.clone(),
            upper_colons.to_lowercase(),
            upper_colons.replace(':', ""),
            upper_colons.replace(':', "-"),
            upper_colons.replace(':', " "),
        ];
        let station = StationId::new("s1").unwrap();
        for form in forms {
            let revoked = Revoked::parse([&form]).unwrap();
            assert!(
                revoked.refuses(&station, &print()),
                "{form} revokes nothing"
            );
            assert!(!revoked.refuses(&station, &Fingerprint([7; 32])), "{form}");
        }
    }

    #[test]
    fn an_entry_that_is_neither_a_station_nor_a_fingerprint_is_refused_by_name() {
        for entry in [
            "",
            "has space",
            "../x",
            // A fingerprint one digit short, one byte long, or with a
            // non-hex digit: not 64 hex digits, and too long (or holding a
            // `:`) for a station id.
            &print().to_string()[1..],
            &format!("{}:00", print()),
            &format!("{}:zz", &print().to_string()[..92]),
            &format!("{HEX}0"),
        ] {
            let err = Revoked::parse(["ok-station", entry]).unwrap_err();
            assert_eq!(
                err,
                RevocationError::Entry {
                    entry: entry.to_owned()
                }
            );
            assert!(err.to_string().contains(&format!("{entry:?}")), "{err}");
        }
    }

    #[test]
    fn sixty_four_hex_digits_revoke_both_the_station_and_the_fingerprint() {
        let revoked = Revoked::parse([HEX]).unwrap();
        let named = StationId::new(HEX).unwrap();
        let other = StationId::new("s1").unwrap();
        assert!(revoked.refuses(&named, &Fingerprint([7; 32])));
        assert!(revoked.refuses(&other, &print()));
        assert!(!revoked.refuses(&other, &Fingerprint([7; 32])));
    }

    #[test]
    fn what_a_reload_adds_is_named_in_normal_form() {
        let before = Revoked::parse(["s1"]).unwrap();
        let after = Revoked::parse(["s1", "s2", &HEX.to_uppercase()]).unwrap();
        let added = after.added_since(&before);
        assert!(added.contains(&"s2".to_owned()), "{added:?}");
        assert!(added.contains(&print().to_string()), "{added:?}");
        assert!(before.added_since(&after).is_empty());
    }
}
