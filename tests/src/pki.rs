//! A throw-away certificate authority with collector and station
//! certificates, written to a temp dir the way `ferry-collector pki` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_common::pki::{CertificateAuthority, Issued, Validity, write_issued};
use ferry_common::station::StationId;
use ferry_common::tls::{self, TlsMaterial};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

/// A CA in a temp dir, with a server certificate for `localhost`/127.0.0.1.
#[derive(Debug)]
pub struct TestPki {
    /// Holds every file; removed on drop.
    pub dir: TempDir,
    pub ca: CertificateAuthority,
}

/// Paths of one certificate and its key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = CertificateAuthority::create("Ferry Test CA", Validity::days_from_now(30))?;
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem())?;
        let pki = Self { dir, ca };
        let server = pki.ca.issue_server(
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            Validity::days_from_now(30),
        )?;
        pki.write("server", &server)?;
        Ok(pki)
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The collector's certificate files.
    pub fn server_files(&self) -> CertFiles {
        self.files("server")
    }

    /// Issues (once) and returns a valid certificate for `station`.
    pub fn station(&self, station: &str) -> anyhow::Result<CertFiles> {
        let files = self.files(station);
        if !files.cert.exists() {
            let id = StationId::new(station)?;
            self.write(
                station,
                &self.ca.issue_station(&id, Validity::days_from_now(30))?,
            )?;
        }
        Ok(files)
    }

    /// A certificate for `station` that expired yesterday.
    pub fn expired_station(&self, station: &str) -> anyhow::Result<CertFiles> {
        let now = OffsetDateTime::now_utc();
        let validity = Validity {
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        };
        let id = StationId::new(station)?;
        let name = format!("{station}-expired");
        self.write(&name, &self.ca.issue_station(&id, validity)?)?;
        Ok(self.files(&name))
    }

    /// A certificate for `station` signed by an unrelated CA.
    pub fn foreign_station(&self, station: &str) -> anyhow::Result<CertFiles> {
        let other = CertificateAuthority::create("Someone Else's CA", Validity::days_from_now(30))?;
        let id = StationId::new(station)?;
        let name = format!("{station}-foreign");
        self.write(
            &name,
            &other.issue_station(&id, Validity::days_from_now(30))?,
        )?;
        Ok(self.files(&name))
    }

    /// The collector's TLS configuration.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let files = self.server_files();
        let material = TlsMaterial::from_files(&self.ca_path(), &files.cert, &files.key)?;
        Ok(tls::server_config(&material)?)
    }

    /// A station's TLS configuration from `files`.
    pub fn client_config(&self, files: &CertFiles) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let material = TlsMaterial::from_files(&self.ca_path(), &files.cert, &files.key)?;
        Ok(tls::client_config(&material)?)
    }

    /// A scratch directory inside the PKI's temp dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let _ = std::fs::create_dir_all(&path);
        path
    }

    fn files(&self, name: &str) -> CertFiles {
        let base: &Path = self.dir.path();
        CertFiles {
            cert: base.join(format!("{name}.pem")),
            key: base.join(format!("{name}.key")),
        }
    }

    fn write(&self, name: &str, issued: &Issued) -> anyhow::Result<()> {
        let files = self.files(name);
        write_issued(issued, &files.cert, &files.key, true)?;
        Ok(())
    }
}
