//! Certificates the project mints itself: a CA, serving certificates and client certificates.
//! Used for the collector's webhook endpoint and by the test control plane.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key pair: {0}")]
    GenerateKey(#[source] rcgen::Error),
    #[error("signing the certificate for {subject}: {source}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0:?} is not a valid DNS name for a certificate")]
    InvalidDnsName(String),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority held in memory.
pub struct CertificateAuthority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl CertificateAuthority {
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, key).map_err(|source| PkiError::Sign {
                subject: common_name.to_string(),
                source,
            })?;
        Ok(Self { issuer, key_pem })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A serving certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, None);
        for name in dns_names {
            let dns = (*name)
                .try_into()
                .map_err(|_| PkiError::InvalidDnsName(name.to_string()))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(common_name, params)
    }

    /// A client certificate; Kubernetes reads the common name as the user and the organization as
    /// a group.
    pub fn issue_client(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<CertifiedKey, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, organization);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(common_name, params)
    }

    fn sign(&self, subject: &str, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                subject: subject.to_string(),
                source,
            })?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh key pair (ECDSA P-256) as (private key in PKCS#8 PEM, public key in SPKI PEM), such as
/// a service-account signing key.
pub fn generate_key_pair_pem() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name
}
