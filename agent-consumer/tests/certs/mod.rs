//! Test certificates made with rcgen, for what `deploy/tls/issue-certs.sh` (openssl's
//! `x509 -days`) cannot make: a certificate whose validity starts in the future. Written
//! as that script writes them, so the agents' `--tls-*` flags take them the same way:
//! `ca.pem`; for each agent `NAME.pem` (its certificate, then the CA's) and
//! `NAME-key.pem` (PKCS#8), naming `spiffe://DOMAIN/NAME` as a URI SAN.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's default).
    Good,
    /// From 2090 to 2091: not valid yet.
    NotYetValid,
}

/// A test CA writing its certificates into one directory.
pub struct Pki {
    dir: PathBuf,
    domain: String,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    /// A new CA for the trust domain `domain`; writes `dir/ca.pem`.
    pub fn new(dir: &Path, domain: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dubbo-mesh");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("dubbo-mesh test CA ({domain})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = cert.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write ca.pem");
        Pki {
            dir: dir.to_owned(),
            domain: domain.to_owned(),
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Issues `name`'s certificate (`spiffe://DOMAIN/NAME`, server and client usage),
    /// valid as `validity` says: writes `NAME.pem` and `NAME-key.pem`.
    pub fn issue(&self, name: &str, validity: Validity) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let uri = format!("spiffe://{}/{name}", self.domain);
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("a URI SAN")));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dubbo-mesh");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if validity == Validity::NotYetValid {
            params.not_before = date_time_ymd(2090, 1, 1);
            params.not_after = date_time_ymd(2091, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let chain = format!("{}{}", cert.pem(), self.ca_pem);
        std::fs::write(self.dir.join(format!("{name}.pem")), chain).expect("write certificate");
        std::fs::write(
            self.dir.join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .expect("write key");
    }

    /// The `--tls-cert`, `--tls-key` and `--tls-ca` flags for `name`'s certificate.
    pub fn tls_flags(&self, name: &str) -> Vec<String> {
        let path = |f: String| self.dir.join(f).to_str().expect("UTF-8 path").to_owned();
        vec![
            "--tls-cert".into(),
            path(format!("{name}.pem")),
            "--tls-key".into(),
            path(format!("{name}-key.pem")),
            "--tls-ca".into(),
            path("ca.pem".into()),
        ]
    }
}
