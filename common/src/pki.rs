//! Certificate authority and certificates for collectors and stations.
//!
//! Ferry runs its own small PKI: one self-signed CA (ECDSA P-256) signs a
//! server certificate for each collector and a client certificate for each
//! station. A station certificate carries the station id as its common name
//! and as the URI `urn:ferry:station:<id>`; the collector trusts the id only
//! through [`station_id_from_der`], after TLS has verified the chain.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime, PrimitiveDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::station::StationId;

/// Prefix of the URI subject alternative name that repeats a station's id.
pub const STATION_URI_PREFIX: &str = "urn:ferry:station:";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {action} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done, e.g. "read" or "create directory".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to overwrite existing {path}", path = .path.display())]
    Exists { path: PathBuf },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("{what} is not a CA certificate")]
    NotACa { what: String },
    #[error("key {key} does not belong to certificate {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("certificate does not identify a station: {reason}")]
    NoStationId { reason: String },
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("{name:?} is neither an IP address nor a valid DNS name")]
    BadName { name: String },
    #[error("validity must end after it starts, not run from {not_before} to {not_after}")]
    BadValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
}

/// The period a new certificate is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (to absorb clock skew between hosts) until `days`
    /// days from now, in whole seconds as certificates store them. An end
    /// beyond the year 9999 is clamped to the last representable second.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        let not_after = now
            .checked_add(Duration::days(i64::from(days)))
            .unwrap_or(PrimitiveDateTime::MAX.assume_utc());
        Validity {
            not_before: whole_seconds(now - Duration::hours(1)),
            not_after: whole_seconds(not_after),
        }
    }

    fn check(&self) -> Result<(), PkiError> {
        if self.not_after <= self.not_before {
            return Err(PkiError::BadValidity {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(())
    }
}

/// A freshly issued certificate and its private key, both PEM encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// The Ferry certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    /// The CA certificate, PEM encoded, as stored in `ca.pem`.
    cert_pem: String,
    /// The CA private key (PKCS#8), PEM encoded, as stored in `ca.key`.
    key_pem: String,
    /// The CA's subject, key identifier and signing key, ready to sign.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA with a fresh ECDSA P-256 key.
    ///
    /// The CA may sign end-entity certificates only (path length 0).
    pub fn create(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        validity.check()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = base_params(common_name, validity)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) private key.
    ///
    /// Fails if the certificate is not a CA certificate that may sign
    /// certificates, or if the key is not the certificate's key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Self::load_labelled(cert_pem, "CA certificate", key_pem, "CA key")
    }

    /// Reads and loads a CA from the certificate and key files.
    pub fn load_files(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let cert_pem = read_to_string(cert)?;
        let key_pem = read_to_string(key)?;
        Self::load_labelled(
            &cert_pem,
            &cert.display().to_string(),
            &key_pem,
            &key.display().to_string(),
        )
    }

    /// The CA certificate, PEM encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM encoded. Handle with care.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a collector (TLS server) certificate for `names`.
    ///
    /// Each name becomes an IP address SAN if it parses as one and a DNS
    /// name SAN otherwise; the first name is also the common name.
    pub fn issue_server(&self, names: &[String], validity: Validity) -> Result<Issued, PkiError> {
        let first = names.first().ok_or(PkiError::NoNames)?;
        let sans = names
            .iter()
            .map(|name| server_san(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut params = leaf_params(first, validity)?;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a station (TLS client) certificate whose common name is the
    /// station id.
    pub fn issue_station(
        &self,
        station: &StationId,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let mut params = leaf_params(station.as_str(), validity)?;
        let uri = format!("{STATION_URI_PREFIX}{station}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn load_labelled(
        cert_pem: &str,
        cert_what: &str,
        key_pem: &str,
        key_what: &str,
    ) -> Result<Self, PkiError> {
        let der = first_certificate_der(cert_pem, cert_what)?;
        let cert = parse_der(&der, cert_what)?;
        if !may_sign_certificates(&cert, cert_what)? {
            return Err(PkiError::NotACa {
                what: cert_what.to_owned(),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Parse {
            what: key_what.to_owned(),
            reason: e.to_string(),
        })?;
        if key.public_key_raw() != cert.public_key().subject_public_key.as_ref() {
            return Err(PkiError::KeyMismatch {
                cert: cert_what.to_owned(),
                key: key_what.to_owned(),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(|e| PkiError::Parse {
                what: cert_what.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What a certificate says about itself, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub subject_cn: Option<String>,
    /// The station this certificate identifies, if it is a valid station
    /// certificate (see [`station_id_from_der`]).
    pub station: Option<StationId>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Colon-separated uppercase hex of the SHA-256 digest of the DER.
    pub sha256_fingerprint: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub client_auth: bool,
    pub server_auth: bool,
}

/// Describes the first certificate in `cert_pem`.
pub fn inspect_pem(cert_pem: &str) -> Result<CertificateInfo, PkiError> {
    let der = first_certificate_der(cert_pem, "certificate")?;
    inspect_der(&der)
}

/// Describes a DER-encoded certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    let what = "certificate";
    let cert = parse_der(der, what)?;
    let eku = tls_usage(&cert, what)?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for name in subject_alt_names(&cert, what)? {
        match name {
            GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => ip_addresses.push(ip_from_bytes(bytes)?),
            _ => {}
        }
    }
    let validity = cert.validity();
    Ok(CertificateInfo {
        subject_cn: single_common_name(&cert).ok(),
        station: station_from_parsed(&cert).ok(),
        is_ca: cert.is_ca(),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        sha256_fingerprint: fingerprint_sha256(der),
        dns_names,
        ip_addresses,
        client_auth: eku.client_auth,
        server_auth: eku.server_auth,
    })
}

/// The station a verified client certificate identifies.
///
/// The certificate must not be a CA, must carry the extended key usage
/// clientAuth, and must have exactly one common name that is a valid station
/// id. If it also carries a `urn:ferry:station:` URI, that must name the same
/// station.
pub fn station_id_from_der(der: &[u8]) -> Result<StationId, PkiError> {
    let cert = parse_der(der, "client certificate")?;
    station_from_parsed(&cert)
}

/// Colon-separated uppercase hex of the SHA-256 digest of `der`, as
/// `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Writes a certificate and its key to disk.
///
/// Parent directories are created. Each file is written to a temporary file
/// in the same directory, synced and then moved into place, so readers never
/// see half a file. The key file is created with mode 0600 and the
/// certificate with 0644. Unless `overwrite` is set, existing files are left
/// alone and [`PkiError::Exists`] names the first one found.
pub fn write_issued(
    issued: &Issued,
    cert_path: &Path,
    key_path: &Path,
    overwrite: bool,
) -> Result<(), PkiError> {
    if !overwrite {
        for path in [cert_path, key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::Exists {
                    path: path.to_owned(),
                });
            }
        }
    }
    write_atomic(key_path, issued.key_pem.as_bytes(), 0o600, overwrite)?;
    write_atomic(cert_path, issued.cert_pem.as_bytes(), 0o644, overwrite)
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn leaf_params(common_name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    validity.check()?;
    let mut params = base_params(common_name, validity)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A random positive 16-byte serial number (RFC 5280 asks for unpredictable
/// serials of at most 20 bytes).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn server_san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if rustls::pki_types::DnsName::try_from(name).is_err() {
        return Err(PkiError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(SanType::DnsName(name.try_into()?))
}

fn first_certificate_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Parse {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
    }
    Err(PkiError::Parse {
        what: what.to_owned(),
        reason: "no PEM CERTIFICATE block found".to_owned(),
    })
}

fn parse_der<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Parse {
            what: what.to_owned(),
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

/// Whether `cert` is a CA (basic constraints cA) whose key usage, if present,
/// allows signing certificates.
fn may_sign_certificates(cert: &X509Certificate<'_>, what: &str) -> Result<bool, PkiError> {
    if !cert.is_ca() {
        return Ok(false);
    }
    let key_usage = cert.key_usage().map_err(|e| PkiError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(key_usage.is_none_or(|ku| ku.value.key_cert_sign()))
}

/// The TLS purposes a certificate's extended key usage allows.
struct TlsUsage {
    client_auth: bool,
    server_auth: bool,
}

/// The TLS extended key usages of `cert`; neither if the extension is absent.
fn tls_usage(cert: &X509Certificate<'_>, what: &str) -> Result<TlsUsage, PkiError> {
    let eku = cert.extended_key_usage().map_err(|e| PkiError::Parse {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(TlsUsage {
        client_auth: eku.as_ref().is_some_and(|ext| ext.value.client_auth),
        server_auth: eku.is_some_and(|ext| ext.value.server_auth),
    })
}

fn subject_alt_names<'a>(
    cert: &'a X509Certificate<'_>,
    what: &str,
) -> Result<&'a [GeneralName<'a>], PkiError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(san.map_or(&[][..], |ext| ext.value.general_names.as_slice()))
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, PkiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(PkiError::Parse {
        what: "certificate".to_owned(),
        reason: format!("IP address SAN of {} bytes", bytes.len()),
    })
}

/// The subject's only common name, as a string.
fn single_common_name(cert: &X509Certificate<'_>) -> Result<String, String> {
    let mut names = cert.subject().iter_common_name();
    let first = names.next().ok_or("the subject has no common name")?;
    if names.next().is_some() {
        return Err("the subject has more than one common name".to_owned());
    }
    first
        .as_str()
        .map(str::to_owned)
        .map_err(|e| format!("the common name is not a string: {e}"))
}

fn station_from_parsed(cert: &X509Certificate<'_>) -> Result<StationId, PkiError> {
    let no_station = |reason: String| PkiError::NoStationId { reason };
    if cert.is_ca() {
        return Err(no_station("it is a CA certificate".to_owned()));
    }
    let eku = tls_usage(cert, "client certificate")?;
    if !eku.client_auth {
        return Err(no_station(
            "it lacks the clientAuth extended key usage".to_owned(),
        ));
    }
    let cn = single_common_name(cert).map_err(no_station)?;
    let station =
        StationId::new(cn.as_str()).map_err(|e| no_station(format!("common name {cn:?}: {e}")))?;
    for name in subject_alt_names(cert, "client certificate")? {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if uri
            .strip_prefix(STATION_URI_PREFIX)
            .is_some_and(|id| id != station.as_str())
        {
            return Err(no_station(format!(
                "common name {cn:?} disagrees with URI {uri:?}"
            )));
        }
    }
    Ok(station)
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` through a synced temporary file in the same
/// directory. Without `overwrite` the final step is a hard link, which fails
/// rather than replace a file that appeared in the meantime.
fn write_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let file_name = path.file_name().ok_or_else(|| PkiError::Io {
        action: "write",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let (tmp_path, file) = create_temp(dir, &file_name.to_string_lossy(), mode)?;
    let placed = fill_and_place(file, &tmp_path, contents, path, overwrite);
    if placed.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp_path);
    }
    placed?;
    sync_dir(dir)
}

fn fill_and_place(
    mut file: File,
    tmp_path: &Path,
    contents: &[u8],
    path: &Path,
    overwrite: bool,
) -> Result<(), PkiError> {
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", tmp_path))?;
    drop(file);
    if overwrite {
        return fs::rename(tmp_path, path).map_err(io_error("replace", path));
    }
    fs::hard_link(tmp_path, path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.to_owned(),
            }
        } else {
            PkiError::Io {
                action: "create",
                path: path.to_owned(),
                source,
            }
        }
    })?;
    fs::remove_file(tmp_path).map_err(io_error("remove", tmp_path))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PkiError {
    let path = path.to_owned();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

/// Creates a new, empty temporary file next to the target with its final
/// permissions already set, so a key is never readable by others.
fn create_temp(dir: &Path, base: &str, mode: u32) -> Result<(PathBuf, File), PkiError> {
    #[cfg(not(unix))]
    let _ = mode;
    let rng = SystemRandom::new();
    let mut last_err = None;
    for _ in 0..16 {
        let mut suffix = [0u8; 6];
        rng.fill(&mut suffix)
            .map_err(|_| PkiError::Generate(rcgen::Error::RingUnspecified))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let tmp_path = dir.join(format!(".{base}.{suffix}.tmp"));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        match options.open(&tmp_path) {
            Ok(file) => {
                // The umask may have taken bits away; set the exact mode.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    if let Err(source) = file.set_permissions(fs::Permissions::from_mode(mode)) {
                        let _ = fs::remove_file(&tmp_path);
                        return Err(PkiError::Io {
                            action: "set permissions on",
                            path: tmp_path,
                            source,
                        });
                    }
                }
                return Ok((tmp_path, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some((tmp_path, e)),
            Err(source) => {
                return Err(PkiError::Io {
                    action: "create",
                    path: tmp_path,
                    source,
                });
            }
        }
    }
    let (path, source) = last_err.unwrap_or_else(|| {
        (
            dir.to_owned(),
            io::Error::other("no temporary file name available"),
        )
    });
    Err(PkiError::Io {
        action: "create",
        path,
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Io {
            action: "sync directory",
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test should fail loudly on any error")]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::create("Test CA", Validity::days_from_now(30)).unwrap()
    }

    fn station(id: &str) -> StationId {
        StationId::new(id).unwrap()
    }

    fn der_of(pem: &str) -> Vec<u8> {
        first_certificate_der(pem, "test").unwrap()
    }

    /// A certificate made with rcgen directly, signed by `ca`.
    fn custom_leaf(
        ca: &CertificateAuthority,
        cn: &str,
        eku: ExtendedKeyUsagePurpose,
        uri: Option<&str>,
    ) -> Vec<u8> {
        let mut params = leaf_params(cn, Validity::days_from_now(1)).unwrap();
        params.extended_key_usages = vec![eku];
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        der_of(&ca.sign(params).unwrap().cert_pem)
    }

    #[test]
    fn ca_survives_a_round_trip_through_pem() {
        let ca = ca();
        let info = inspect_pem(ca.cert_pem()).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.subject_cn.as_deref(), Some("Test CA"));
        assert_eq!(info.station, None);

        let loaded = CertificateAuthority::load(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());

        // The loaded CA signs with the same key and the same subject.
        let issued = loaded
            .issue_station(&station("s1"), Validity::days_from_now(1))
            .unwrap();
        let ca_der = der_of(ca.cert_pem());
        let ca_cert = parse_der(&ca_der, "ca").unwrap();
        let leaf_der = der_of(&issued.cert_pem);
        let leaf = parse_der(&leaf_der, "leaf").unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn station_certificate_names_its_station_and_client_auth() {
        let validity = Validity::days_from_now(10);
        let issued = ca()
            .issue_station(&station("rfeye002073"), validity)
            .unwrap();
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.station, Some(station("rfeye002073")));
        assert_eq!(info.subject_cn.as_deref(), Some("rfeye002073"));
        assert!(info.client_auth);
        assert!(!info.server_auth);
        assert!(!info.is_ca);
        assert_eq!(info.not_before, validity.not_before);
        assert_eq!(info.not_after, validity.not_after);
        assert!(info.not_after > OffsetDateTime::now_utc() + Duration::days(9));
        assert!(info.not_after <= OffsetDateTime::now_utc() + Duration::days(10));
        assert_eq!(info.sha256_fingerprint.len(), 95);
        assert_eq!(info.sha256_fingerprint.split(':').count(), 32);
        assert!(
            info.sha256_fingerprint
                .chars()
                .all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        let der = der_of(&issued.cert_pem);
        assert_eq!(info.sha256_fingerprint, fingerprint_sha256(&der));
        assert_eq!(station_id_from_der(&der).unwrap(), station("rfeye002073"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn fingerprint_matches_a_known_digest() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(
            fingerprint_sha256(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn server_certificate_carries_dns_and_ip_names() {
        let names = vec!["collector.example.org".to_owned(), "192.0.2.7".to_owned()];
        let issued = ca()
            .issue_server(&names, Validity::days_from_now(1))
            .unwrap();
        let info = inspect_pem(&issued.cert_pem).unwrap();
        assert_eq!(info.subject_cn.as_deref(), Some("collector.example.org"));
        assert_eq!(info.dns_names, vec!["collector.example.org".to_owned()]);
        assert_eq!(
            info.ip_addresses,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert!(info.server_auth);
        assert!(!info.client_auth);
        assert_eq!(info.station, None);
    }

    #[test]
    fn server_certificate_needs_valid_names() {
        let ca = ca();
        let validity = Validity::days_from_now(1);
        assert!(matches!(
            ca.issue_server(&[], validity),
            Err(PkiError::NoNames)
        ));
        for bad in ["", "bad name", "exa_mple..org", "-x.org"] {
            let err = ca.issue_server(&[bad.to_owned()], validity).unwrap_err();
            assert!(
                matches!(&err, PkiError::BadName { name } if name == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn load_refuses_a_leaf_as_ca() {
        let ca = ca();
        let issued = ca
            .issue_server(&["localhost".to_owned()], Validity::days_from_now(1))
            .unwrap();
        let err = CertificateAuthority::load(&issued.cert_pem, &issued.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotACa { .. }), "{err}");
    }

    #[test]
    fn load_refuses_a_key_that_is_not_the_cas() {
        let ca = ca();
        let other = CertificateAuthority::create("Other", Validity::days_from_now(1)).unwrap();
        let err = CertificateAuthority::load(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "key CA key does not belong to certificate CA certificate"
        );
        let err = CertificateAuthority::load(ca.cert_pem(), "not a key").unwrap_err();
        assert!(matches!(err, PkiError::Parse { .. }), "{err}");
    }

    #[test]
    fn load_files_names_the_missing_file() {
        let dir = tempdir();
        let missing = dir.join("ca.pem");
        let err = CertificateAuthority::load_files(&missing, &dir.join("ca.key")).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn server_certificate_is_no_station() {
        let ca = ca();
        let issued = ca
            .issue_server(&["station-01".to_owned()], Validity::days_from_now(1))
            .unwrap();
        let err = station_id_from_der(&der_of(&issued.cert_pem)).unwrap_err();
        assert!(matches!(err, PkiError::NoStationId { .. }), "{err}");
        assert!(err.to_string().contains("clientAuth"), "{err}");
        let err = station_id_from_der(&der_of(ca.cert_pem())).unwrap_err();
        assert!(matches!(err, PkiError::NoStationId { .. }), "{err}");
    }

    #[test]
    fn client_certificate_with_a_bad_common_name_is_no_station() {
        let ca = ca();
        let der = custom_leaf(&ca, "../evil", ExtendedKeyUsagePurpose::ClientAuth, None);
        let err = station_id_from_der(&der).unwrap_err();
        assert!(matches!(err, PkiError::NoStationId { .. }), "{err}");
        assert!(err.to_string().contains("../evil"), "{err}");
        assert_eq!(inspect_der(&der).unwrap().station, None);
    }

    #[test]
    fn client_certificate_whose_uri_disagrees_is_no_station() {
        let ca = ca();
        let der = custom_leaf(
            &ca,
            "s1",
            ExtendedKeyUsagePurpose::ClientAuth,
            Some("urn:ferry:station:s2"),
        );
        let err = station_id_from_der(&der).unwrap_err();
        assert!(err.to_string().contains("s2"), "{err}");
    }

    /// The certificates must satisfy rustls/webpki, not only x509-parser:
    /// a station and a collector complete a mutual TLS handshake with them,
    /// and the collector learns the station from the client certificate.
    #[test]
    fn issued_certificates_complete_a_mutual_tls_handshake() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use rustls::server::WebPkiClientVerifier;
        use rustls::{
            ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection,
        };
        use std::sync::Arc;

        let ca = ca();
        let validity = Validity::days_from_now(1);
        let server = ca
            .issue_server(
                &["collector.test".to_owned(), "127.0.0.1".to_owned()],
                validity,
            )
            .unwrap();
        let client = ca.issue_station(&station("st-9"), validity).unwrap();
        let chain = |pem: &str| vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()];
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain(ca.cert_pem()).remove(0)).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        for server_name in ["collector.test", "127.0.0.1"] {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .unwrap();
            let server_config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain(&server.cert_pem), key(&server.key_pem))
                .unwrap();
            let client_config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain(&client.cert_pem), key(&client.key_pem))
                .unwrap();
            let name = ServerName::try_from(server_name).unwrap();
            let mut c = ClientConnection::new(Arc::new(client_config), name).unwrap();
            let mut s = ServerConnection::new(Arc::new(server_config)).unwrap();
            for _ in 0..10 {
                if !c.is_handshaking() && !s.is_handshaking() {
                    break;
                }
                let mut buf = Vec::new();
                c.write_tls(&mut buf).unwrap();
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets().unwrap();
                let mut buf = Vec::new();
                s.write_tls(&mut buf).unwrap();
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets().unwrap();
            }
            assert!(!c.is_handshaking() && !s.is_handshaking(), "{server_name}");
            let peer = &s.peer_certificates().unwrap()[0];
            assert_eq!(station_id_from_der(peer).unwrap(), station("st-9"));
        }
    }

    #[test]
    fn expired_validity_is_refused() {
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now,
            not_after: now - Duration::days(1),
        };
        assert!(matches!(
            CertificateAuthority::create("x", validity),
            Err(PkiError::BadValidity { .. })
        ));
        assert!(matches!(
            ca().issue_station(&station("s1"), validity),
            Err(PkiError::BadValidity { .. })
        ));
    }

    #[test]
    fn huge_validity_is_clamped_to_year_9999() {
        let validity = Validity::days_from_now(u32::MAX);
        assert_eq!(validity.not_after.year(), 9999);
        let ca = CertificateAuthority::create("Forever", validity).unwrap();
        assert_eq!(
            inspect_pem(ca.cert_pem()).unwrap().not_after,
            validity.not_after
        );
    }

    #[test]
    fn inspect_reports_garbage() {
        assert!(matches!(inspect_pem("hello"), Err(PkiError::Parse { .. })));
        assert!(matches!(
            inspect_der(b"\x30\x03abc"),
            Err(PkiError::Parse { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn write_issued_sets_modes_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempdir();
        let ca = ca();
        let first = ca
            .issue_station(&station("s1"), Validity::days_from_now(1))
            .unwrap();
        let cert = dir.join("stations/s1.pem");
        let key = dir.join("stations/s1.key");
        write_issued(&first, &cert, &key, false).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(fs::read_to_string(&cert).unwrap(), first.cert_pem);
        assert_eq!(fs::read_to_string(&key).unwrap(), first.key_pem);

        let second = ca
            .issue_station(&station("s1"), Validity::days_from_now(1))
            .unwrap();
        let err = write_issued(&second, &cert, &key, false).unwrap_err();
        assert!(
            matches!(&err, PkiError::Exists { path } if *path == cert),
            "{err}"
        );
        assert!(err.to_string().contains("s1.pem"), "{err}");
        assert_eq!(fs::read_to_string(&key).unwrap(), first.key_pem);

        write_issued(&second, &cert, &key, true).unwrap();
        assert_eq!(fs::read_to_string(&cert).unwrap(), second.cert_pem);
        assert_eq!(fs::read_to_string(&key).unwrap(), second.key_pem);
        assert_eq!(mode(&key), 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.join("stations"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory under the system temp dir (ferry-common has no
    /// tempfile dependency).
    fn tempdir() -> PathBuf {
        let mut suffix = [0u8; 8];
        SystemRandom::new().fill(&mut suffix).unwrap();
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("ferry-pki-test-{name}"));
        fs::create_dir(&dir).unwrap();
        dir
    }
}
